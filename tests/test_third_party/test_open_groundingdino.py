"""Open-GroundingDino adapter: NestedTensor interface, args, freezing,
parity with the mmdet backbone, and the build_backbone patch (on a stand-in
of Open-GroundingDino's module layout; the real repository is not
installed here)."""
import sys
import types

import pytest
import torch
import torch.nn as nn

import third_party.open_groundingdino as ogd
from third_party.open_groundingdino import surgeryclip_backbone as sb

from plugins.models import OPEN_CLIP_TINY_MODEL_NAME as TINY
from plugins.models import create_model
from tests.helpers import randn_images


@pytest.fixture(scope='module')
def ckpts(tiny_clip_files):
    return tiny_clip_files[1]


def _args(ckpt=None, **kw):
    base = dict(
        backbone='surgeryclip',
        surgeryclip_ckpt=None if ckpt is None else str(ckpt),
        train_surgeryclip_backbone=False,
        surgeryclip_model_name=TINY,
        surgeryclip_surgery_depth=2,
        return_interm_indices=[3],
        num_feature_levels=1)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_imports_without_open_groundingdino():
    assert 'groundingdino' not in sys.modules
    assert ogd.nested_tensor_class() is ogd.NestedTensor
    nt = ogd.NestedTensor(torch.zeros(1, 3, 4, 4), None)
    assert nt.decompose()[1] is None and nt.to('cpu').tensors.shape[0] == 1


def test_forward_contract_and_mask(ckpts):
    backbone, channels = ogd.build_surgeryclip_backbone(
        _args(ckpts['safetensors']))
    assert channels == [32] and backbone.num_channels == [32]
    images = randn_images(100, 130)
    mask = torch.zeros(2, 100, 130, dtype=torch.bool)
    mask[1, :, 90:] = True  # the second image is 90 px wide, padded
    mask[1, 70:, :] = True
    with torch.no_grad():
        out = backbone(ogd.NestedTensor(images, mask))
    assert list(out) == ['0']
    feats, small = out['0'].decompose()
    assert feats.shape == (2, 32, 7, 9) and small.shape == (2, 7, 9)
    assert small.dtype == torch.bool and not small[0].any()
    # each cell is padding iff its patch starts in the padding
    cols = torch.arange(9) * 16 >= 90
    rows = torch.arange(7) * 16 >= 70
    torch.testing.assert_close(small[1], rows[:, None] | cols[None, :])
    with torch.no_grad():  # a bare tensor: no padding
        bare = backbone(images)['0']
    assert not bare.mask.any()
    torch.testing.assert_close(bare.tensors[0], feats[0])


def test_equals_the_mmdet_backbone_on_clip_normalised_input(ckpts):
    from plugins.mmdet_custom.models.backbones import SurgeryCLIPBackbone
    backbone, _ = ogd.build_surgeryclip_backbone(_args(ckpts['safetensors']))
    ref = SurgeryCLIPBackbone(
        TINY,
        surgery_depth=2,
        with_proj=True,
        pretrained=str(ckpts['safetensors'])).eval()
    ref.init_weights()
    pixels = torch.rand(2, 3, 64, 96)  # [0, 1] RGB
    imagenet = (pixels - torch.tensor(sb.IMAGENET_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(sb.IMAGENET_STD).view(1, 3, 1, 1)
    clip_in = (pixels - torch.tensor(sb.CLIP_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(sb.CLIP_STD).view(1, 3, 1, 1)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    with torch.no_grad():
        ours = backbone(ogd.NestedTensor(imagenet, mask))['0'].tensors
        torch.testing.assert_close(ours, ref(clip_in)[0], atol=1e-5, rtol=1e-5)
        clip_normed, _ = ogd.build_surgeryclip_backbone(
            _args(ckpts['safetensors'], surgeryclip_input_norm='clip'))
        torch.testing.assert_close(
            clip_normed(clip_in)['0'].tensors,
            ref(clip_in)[0])


def test_windowed_attention_equals_the_mmdet_backbone(ckpts):
    # surgeryclip_window_size / _global_blocks reach the tower: the same
    # windowed attention as SurgeryCLIPBackbone(window_size=...), and not
    # the global result (a 6 x 8 grid in 2 x 2 windows).
    from plugins.mmdet_custom.models.backbones import SurgeryCLIPBackbone
    args = _args(ckpts['safetensors'], surgeryclip_input_norm='clip',
                 surgeryclip_window_size=2, surgeryclip_global_blocks=[3])
    backbone, _ = ogd.build_surgeryclip_backbone(args)
    assert backbone.body.window_size == 2
    ref = SurgeryCLIPBackbone(TINY, surgery_depth=2, with_proj=True,
                              window_size=2, global_blocks=[3],
                              pretrained=str(ckpts['safetensors'])).eval()
    ref.init_weights()
    plain, _ = ogd.build_surgeryclip_backbone(
        _args(ckpts['safetensors'], surgeryclip_input_norm='clip'))
    x = randn_images(96, 128, batch=1)
    with torch.no_grad():
        ours = backbone(x)['0'].tensors
        torch.testing.assert_close(ours, ref(x)[0], atol=1e-5, rtol=1e-5)
        assert (ours - plain(x)['0'].tensors).abs().max() > 1e-3


def test_openai_archive_needs_the_configured_quick_gelu(ckpts):
    from plugins.models.weights import ActivationMismatchError
    with pytest.raises(ActivationMismatchError) as info:
        ogd.build_surgeryclip_backbone(
            _args(ckpts['openai'], surgeryclip_with_proj=False))
    msg = str(info.value)
    assert str(ckpts['openai']) in msg and 'OpenAI CLIP layout' in msg
    assert 'args.surgeryclip_quick_gelu=True' in msg
    backbone, channels = ogd.build_surgeryclip_backbone(
        _args(ckpts['openai'], surgeryclip_with_proj=False,
              surgeryclip_quick_gelu=True))
    assert channels == [64]
    from open_clip.transformer import QuickGELU
    assert any(isinstance(m, QuickGELU) for m in backbone.modules())
    assert not any(type(m) is nn.GELU for m in backbone.modules())


def test_openai_name_is_the_default(ckpts):
    assert sb.DEFAULT_MODEL_NAME == 'ViT-B-16-quickgelu'


def test_loading_says_the_file_once_and_no_false_warning(ckpts, capsys,
                                                         caplog):
    """What Open-GroundingDino's user sees: no open_clip "No pretrained
    weights loaded ... initialized randomly" on a build that loads, and one
    printed line naming the file and the number of tensors."""
    import logging
    with caplog.at_level(logging.INFO):
        ogd.build_surgeryclip_backbone(_args(ckpts['safetensors']))
    out = capsys.readouterr().out
    said = [line for line in out.splitlines()
            if str(ckpts['safetensors']) in line]
    assert len(said) == 1, out
    n = len(create_model(TINY).state_dict())
    assert f'loaded {n} tensors' in said[0]
    assert not [r for r in caplog.records
                if 'No pretrained weights' in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_frozen_by_default():
    backbone, _ = ogd.build_surgeryclip_backbone(_args())  # random weights
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules())


def test_training_the_backbone_every_trainable_param_gets_a_grad():
    backbone, _ = ogd.build_surgeryclip_backbone(
        _args(train_surgeryclip_backbone=True, use_checkpoint=True))
    backbone.train()
    assert backbone.training and backbone.body.grad_checkpointing
    out = backbone(randn_images(32, 48))['0'].tensors
    out.square().mean().backward()
    trainable = [(n, p) for n, p in backbone.named_parameters()
                 if p.requires_grad]
    assert len(trainable) > 10
    assert all(p.grad is not None for _, p in trainable)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in backbone.named_parameters()
        if n.startswith(('body.visual.transformer.resblocks.3.mlp.',
                         'body.visual.transformer.resblocks.3.ln_2.'))
    }


def test_train_last_n_blocks():
    backbone, _ = ogd.build_surgeryclip_backbone(
        _args(
            train_surgeryclip_backbone=True,
            surgeryclip_train_last_n_blocks=2))
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(('body.visual.transformer.resblocks.2.',
                      'body.visual.transformer.resblocks.3.attn.',
                      'body.visual.transformer.resblocks.3.ln_1.',
                      'body.visual.ln_post.', 'body.visual.proj'))
        for n in trainable)
    with pytest.raises(ValueError, match=r'train_last_n_blocks \(9\)'):
        ogd.build_surgeryclip_backbone(
            _args(
                train_surgeryclip_backbone=True,
                surgeryclip_train_last_n_blocks=9))


def test_bad_arguments():
    with pytest.raises(ValueError, match="surgeryclip_input_norm 'bgr'"):
        ogd.build_surgeryclip_backbone(_args(surgeryclip_input_norm='bgr'))
    with pytest.raises(ValueError, match=r'surgery_depth \(5\)'):
        ogd.build_surgeryclip_backbone(_args(surgeryclip_surgery_depth=5))
    with pytest.raises(FileNotFoundError):
        ogd.build_surgeryclip_backbone(_args('/nonexistent/ViT-B-16.pt'))


def test_uses_the_hosts_nested_tensor_when_importable(monkeypatch):

    class HostNestedTensor(ogd.NestedTensor):
        pass

    misc = types.ModuleType('groundingdino.util.misc')
    misc.NestedTensor = HostNestedTensor
    for name in ('groundingdino', 'groundingdino.util'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, 'groundingdino.util.misc', misc)
    monkeypatch.setattr(sb, '_nested_tensor_cls', None)
    backbone, _ = ogd.build_surgeryclip_backbone(_args())
    with torch.no_grad():
        out = backbone(HostNestedTensor(randn_images(32, 32), None))
    assert type(out['0']) is HostNestedTensor
    monkeypatch.setattr(sb, '_nested_tensor_cls', None)


@pytest.fixture
def fake_host(monkeypatch):
    """Open-GroundingDino's module layout: backbone.backbone defines
    build_backbone/Joiner/build_position_encoding; groundingdino.py imports
    build_backbone by name."""

    class Joiner(nn.Sequential):

        def forward(self, tensor_list):
            xs = self[0](tensor_list)
            out = list(xs.values())
            return out, [self[1](x) for x in out]

    def original(args):
        return 'original:' + args.backbone

    host = types.ModuleType('models.GroundingDINO.backbone.backbone')
    host.Joiner = Joiner
    host.build_position_encoding = lambda args: nn.Identity()
    host.build_backbone = original
    detector = types.ModuleType('models.GroundingDINO.groundingdino')
    detector.build_backbone = original
    for name in ('models', 'models.GroundingDINO',
                 'models.GroundingDINO.backbone'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, host.__name__, host)
    monkeypatch.setitem(sys.modules, detector.__name__, detector)
    return host, detector


def test_apply_routes_surgeryclip_through_build_backbone(fake_host):
    host, detector = fake_host
    report = ogd.apply()
    assert report['patched'] == [
        'models.GroundingDINO.backbone.backbone',
        'models.GroundingDINO.groundingdino'
    ]
    assert ogd.apply() == {'patched': []}  # idempotent
    assert detector.build_backbone(_args(backbone='swin_T_224_1k')) == \
        'original:swin_T_224_1k'
    model = detector.build_backbone(_args())
    assert isinstance(model, host.Joiner) and model.num_channels == [32]
    with torch.no_grad():
        feats, pos = model(ogd.NestedTensor(randn_images(32, 48), None))
    assert feats[0].tensors.shape == (2, 32, 2, 3) and len(pos) == 1
    with pytest.raises(ValueError, match=r'return_interm_indices = \[3\]'):
        detector.build_backbone(_args(return_interm_indices=[1, 2, 3]))


def test_apply_without_open_groundingdino_names_pythonpath():
    with pytest.raises(ImportError, match='PYTHONPATH'):
        ogd.apply('models_that_do_not_exist.backbone')


def test_apply_names_the_host_import_failure(tmp_path, monkeypatch):
    """Open-GroundingDino found but failing on import (its ms_deform_attn.py
    raises a plain Exception without its compiled op, seen in a real
    checkout on a CPU machine): named, with the host's message, and no
    PYTHONPATH advice."""
    pkg = tmp_path / 'ogdx'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'backbone.py').write_text(
        "raise Exception('Wont work without MultiScaleDeformableAttention')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError) as info:
            ogd.apply('ogdx.backbone')
    finally:
        for name in [n for n in sys.modules if n.startswith('ogdx')]:
            del sys.modules[name]
    message = str(info.value)
    assert 'cannot import ogdx.backbone (Exception: Wont work without ' \
        'MultiScaleDeformableAttention)' in message
    assert 'PYTHONPATH' not in message and 'Drop-in steps' in message


@pytest.mark.slow  # a fresh interpreter: ~10 s of imports
def test_works_without_mmdet_or_mmengine(repo_root):
    """Open-GroundingDino environments have no OpenMMLab packages: the
    adapter and the host-free models must not need them."""
    import subprocess
    code = '''
import sys, types
for name in ("mmdet", "mmengine", "mmcv"):
    sys.modules[name] = None  # any import of them fails
import torch
import third_party.open_groundingdino as ogd
from plugins.models.concept_clip import ConceptCLIP
from tests.helpers import randn_images
args = types.SimpleNamespace(surgeryclip_model_name="ViT-Tiny-16-test",
                             surgeryclip_surgery_depth=2)
backbone, channels = ogd.build_surgeryclip_backbone(args)
out = backbone(ogd.NestedTensor(torch.rand(1, 3, 32, 32), None))
ConceptCLIP("ConceptCLIP-Tiny-test", vision_only=True)
assert not any(m.startswith(("mmdet.", "mmengine.", "mmcv."))
               for m in sys.modules)
print(channels, tuple(out["0"].tensors.shape))
'''
    result = subprocess.run([sys.executable, '-c', code],
                            cwd=repo_root,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '[32] (1, 32, 2, 2)' in result.stdout
