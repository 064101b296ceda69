"""OpenCLIPBackbone: parity with open_clip, shapes, freezing, weights."""
import pytest
import torch
from mmdet.registry import MODELS

from plugins.mmdet_custom.models.backbones import OpenCLIPBackbone
from plugins.models import OPEN_CLIP_TINY_MODEL_NAME, create_model
from plugins.models.normalization import OPENAI_CLIP_MEAN
from plugins.utils import StateDictMismatchError
from tests.helpers import randn_images

TINY_OPEN_CLIP = OPEN_CLIP_TINY_MODEL_NAME


def _loaded(backbone):
    """The backbone after the runner's ``init_weights()`` (which reads
    ``pretrained``)."""
    backbone.init_weights()
    return backbone


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return OpenCLIPBackbone(TINY_OPEN_CLIP).eval()


def _upstream_map(visual, x, index):
    out = visual.forward_intermediates(
        x,
        indices=[index],
        normalize_intermediates=True,
        intermediates_only=True)
    return out['image_intermediates'][-1]


def test_parity_vit_b_16_with_open_clip_forward_intermediates():
    """The acceptance check, on the real ViT-B-16 architecture."""
    torch.manual_seed(0)
    backbone = OpenCLIPBackbone('ViT-B-16').eval()
    x = randn_images(224, 224, batch=1)
    with torch.no_grad():
        ours = backbone(x)
        ref = _upstream_map(backbone.visual, x, 11)
    assert len(ours) == 1 and ours[0].shape == (1, 768, 14, 14)
    torch.testing.assert_close(ours[0], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize('index', [0, 2, 3])
def test_parity_tiny_every_block(tiny, index):
    model = OpenCLIPBackbone(TINY_OPEN_CLIP, out_indices=index).eval()
    model.load_state_dict(tiny.state_dict())
    x = randn_images(224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x)[0],
            _upstream_map(model.visual, x, index),
            rtol=0,
            atol=1e-5)


@pytest.mark.parametrize('size,grid', [((224, 224), (14, 14)),
                                       ((320, 480), (20, 30)),
                                       ((230, 97), (15, 7)),
                                       ((16, 16), (1, 1))])
def test_output_shapes(tiny, size, grid):
    with torch.no_grad():
        out = tiny(randn_images(*size))
    assert [tuple(o.shape) for o in out] == [(2, 64, *grid)]
    assert tiny.out_channels == 64 and tiny.out_strides == 16


def test_padding_equals_explicit_zero_padding(tiny):
    x = randn_images(230, 97)
    padded = torch.nn.functional.pad(x, (0, 15, 0, 10))
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)[0], tiny(padded)[0])


def test_several_out_indices_and_projection():
    model = OpenCLIPBackbone(
        TINY_OPEN_CLIP, out_indices=(1, -1), with_proj=True).eval()
    with torch.no_grad():
        out = model(randn_images(64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 32, 4, 6)] * 2
    assert model.out_indices == (1, 3) and model.out_channels == 32


def test_frozen_has_no_trainable_parameter_and_stays_in_eval():
    model = OpenCLIPBackbone(TINY_OPEN_CLIP, frozen=True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_train_last_n_blocks_trains_exactly_the_last_two():
    model = OpenCLIPBackbone(TINY_OPEN_CLIP, train_last_n_blocks=2)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(('visual.transformer.resblocks.2.',
                         'visual.transformer.resblocks.3.', 'visual.ln_post.'))
    }
    assert trainable == expected
    assert not model.visual.transformer.resblocks[1].training
    assert model.visual.transformer.resblocks[3].training
    out = model(randn_images(32, 48))[0]
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if n in expected)


def test_unused_projection_is_not_trainable():
    model = OpenCLIPBackbone(TINY_OPEN_CLIP)
    assert not model.visual.proj.requires_grad
    assert OpenCLIPBackbone(
        TINY_OPEN_CLIP, with_proj=True).visual.proj.requires_grad


@torch.no_grad()
def test_pos_embed_cache_per_grid_and_invalidation(tiny):
    pos = tiny.tower.pos_embed((20, 30))
    assert pos.shape == (1 + 600, 64)
    assert tiny.tower.pos_embed((20, 30)) is pos  # cached
    assert tiny.tower.pos_embed((14, 14)) is \
        tiny.visual.positional_embedding                     # native grid
    tiny.visual.positional_embedding.add_(0)  # in-place update
    assert tiny.tower.pos_embed((20, 30)) is not pos


def test_pos_embed_cached_for_a_frozen_backbone_with_grad_on():
    model = OpenCLIPBackbone(TINY_OPEN_CLIP, frozen=True)
    assert model.tower.pos_embed((5, 7)) is model.tower.pos_embed((5, 7))


def test_pos_embed_gets_gradients_when_trained():
    model = OpenCLIPBackbone(TINY_OPEN_CLIP).train()
    model(randn_images(32, 48))[0].sum().backward()
    assert model.visual.positional_embedding.grad is not None


@pytest.mark.parametrize('fmt', ['safetensors', 'bin', 'openai'])
def test_weights_round_trip_every_format(tiny_clip_files, fmt, caplog):
    model, files = tiny_clip_files
    # OpenAI's files need the activation they were trained with
    quick = fmt == 'openai'
    backbone = OpenCLIPBackbone(TINY_OPEN_CLIP, pretrained=str(files[fmt]),
                                quick_gelu=quick or None)
    untouched = {k: v.clone() for k, v in backbone.state_dict().items()}
    _loaded(backbone)
    ref = {'visual.' + k: v for k, v in model.visual.state_dict().items()}
    state = backbone.state_dict()
    assert set(state) == set(ref) | {'activation'}  # strict load
    assert not torch.equal(untouched['visual.proj'], state['visual.proj'])
    atol = 1e-3 if fmt == 'openai' else 0  # OpenAI archives are fp16
    for key in ref:
        torch.testing.assert_close(state[key], ref[key], rtol=0, atol=atol)
    x = randn_images(224, 224)
    reference = create_model(TINY_OPEN_CLIP, quick_gelu=quick).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = _upstream_map(reference.visual, x, 3)
        torch.testing.assert_close(
            backbone.eval()(x)[0],
            expected,
            rtol=0,
            atol=0.05 if fmt == 'openai' else 0)


def test_converted_openai_file_needs_quick_gelu_too(tiny_clip_files,
                                                    tmp_path):
    """tools/convert_clip_checkpoint.py drops OpenAI's metadata tensors and
    records their activation in the header; the backbone reads it."""
    from plugins.models.weights import ActivationMismatchError
    from tools.convert_clip_checkpoint import main as convert
    model, files = tiny_clip_files
    out = tmp_path / 'converted.safetensors'
    assert convert([str(files['openai']), str(out)]) == 0
    with pytest.raises(ActivationMismatchError,
                       match='converted file recording quick_gelu'):
        _loaded(OpenCLIPBackbone(TINY_OPEN_CLIP, pretrained=str(out)))
    backbone = _loaded(OpenCLIPBackbone(TINY_OPEN_CLIP, pretrained=str(out),
                                        quick_gelu=True))
    torch.testing.assert_close(backbone.visual.proj, model.visual.proj,
                               rtol=0, atol=1e-3)


def test_weights_from_folder_and_init_cfg_prefix(tiny_clip_files, tmp_path):
    model, files = tiny_clip_files
    folder_model = _loaded(OpenCLIPBackbone(
        TINY_OPEN_CLIP, pretrained=str(files['bin'].parent)))
    torch.testing.assert_close(folder_model.visual.proj, model.visual.proj)
    # a detector checkpoint: weights under 'backbone.'
    det = {'backbone.' + k: v for k, v in folder_model.state_dict().items()}
    det['neck.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': det, 'meta': {}}, tmp_path / 'det.pth')
    from_det = _loaded(OpenCLIPBackbone(
        TINY_OPEN_CLIP,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'det.pth'),
            prefix='backbone.')))
    torch.testing.assert_close(from_det.visual.proj, model.visual.proj)


def test_wrong_layout_error_lists_keys(tmp_path, tiny_clip_files):
    model, _ = tiny_clip_files
    timm_like = {
        k.replace('visual.transformer.resblocks', 'blocks'): v
        for k, v in model.state_dict().items()
    }
    torch.save(timm_like, tmp_path / 'wrong.bin')
    with pytest.raises(StateDictMismatchError) as info:
        _loaded(OpenCLIPBackbone(
            TINY_OPEN_CLIP, pretrained=str(tmp_path / 'wrong.bin')))
    msg = str(info.value)
    assert 'missing keys: [visual.transformer.resblocks.0.' in msg
    assert 'unexpected keys: [blocks.0.' in msg
    assert 'convert_clip_checkpoint.py' in msg
    assert info.value.missing and info.value.unexpected


def test_other_architecture_reports_shape_mismatch(tiny_clip_files):
    _, files = tiny_clip_files
    with pytest.raises(StateDictMismatchError, match='shape-mismatched'):
        _loaded(OpenCLIPBackbone('ViT-B-32',
                                 pretrained=str(files['safetensors'])))


def test_missing_weights_file_names_path(tmp_path):
    # building reads nothing (tools/test.py never needs the file) ...
    backbone = OpenCLIPBackbone(
        TINY_OPEN_CLIP, pretrained=str(tmp_path / 'nope.safetensors'))
    # ... init_weights (training) fails at once, naming it
    with pytest.raises(FileNotFoundError, match='nope.safetensors'):
        backbone.init_weights()


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match='smaller than one 16x16 patch'):
        tiny(randn_images(8, 64))
    bad = randn_images(32, 32)
    bad[0, 0, 0, 0] = float('nan')
    bad[1, 1, 1, 1] = float('inf')
    with pytest.raises(ValueError, match='1 NaN and 1 Inf'):
        tiny(bad)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tiny(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tiny(torch.rand(3, 32, 32))


def test_bad_arguments():
    with pytest.raises(ValueError, match='out of range'):
        OpenCLIPBackbone(TINY_OPEN_CLIP, out_indices=4)
    with pytest.raises(ValueError, match=r'train_last_n_blocks \(5\)'):
        OpenCLIPBackbone(TINY_OPEN_CLIP, train_last_n_blocks=5)
    with pytest.raises(ValueError, match='contradict'):
        OpenCLIPBackbone(TINY_OPEN_CLIP, frozen=True, train_last_n_blocks=1)
    with pytest.raises(KeyError, match='unknown open_clip model'):
        OpenCLIPBackbone('ViT-Q-99')
    with pytest.raises(TypeError, match='BiomedCLIPBackbone'):
        OpenCLIPBackbone('BiomedCLIP-Tiny-test')


def _base_models_config():
    from pathlib import Path

    from mmengine.config import Config
    root = Path(__file__).resolve().parents[4]
    return Config.fromfile(root / 'configs/_base_/models/clip_backbones.py')


def test_registered_and_normalisation_exposed():
    model = MODELS.build(
        dict(type='OpenCLIPBackbone', model_name=TINY_OPEN_CLIP, frozen=True))
    assert isinstance(model, OpenCLIPBackbone)
    assert model.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert model.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    # the configs' DetDataPreprocessor numbers (0-255 units) are these
    base = _base_models_config()
    assert base.clip_mean == pytest.approx([m * 255 for m in model.mean],
                                           abs=1e-3)
    assert base.clip_std == pytest.approx([s * 255 for s in model.std],
                                          abs=1e-3)
    assert model.patch_size == 16


def test_normalisation_follows_the_release():
    model = OpenCLIPBackbone(
        'ViT-B-32', pretrained_tag='laion2b_s34b_b79k', frozen=True)
    assert model.mean == pytest.approx(OPENAI_CLIP_MEAN)
    assert model.patch_size == 32 and model.out_channels == 768
    with pytest.raises(KeyError, match='no pretrained tag'):
        OpenCLIPBackbone(TINY_OPEN_CLIP, pretrained_tag='laion2b_s34b_b79k')
    custom = OpenCLIPBackbone(TINY_OPEN_CLIP, mean=(0.1, 0.2, 0.3))
    assert custom.mean == (0.1, 0.2, 0.3)


def test_init_weights_keeps_loaded_weights(tiny_clip_files):
    model, files = tiny_clip_files
    backbone = OpenCLIPBackbone(
        TINY_OPEN_CLIP, pretrained=str(files['safetensors']))
    backbone.init_weights()
    torch.testing.assert_close(backbone.visual.proj, model.visual.proj)


def test_benchmark_tool_updates_only_its_section(tmp_path):
    from tools.benchmark_backbones import SECTION, main
    doc = tmp_path / 'benchmarks.md'
    doc.write_text('# Benchmarks\n\n## Other topic\n\nkeep me\n')
    assert main([
        '--tiny', '--models', 'openclip', '--sizes', '32x48', '--iters', '1',
        '--warmup', '0', '--write',
        str(doc)
    ]) == 0
    text = doc.read_text()
    assert '## Other topic\n\nkeep me' in text and SECTION in text
    assert '| OpenCLIP ViT-Tiny-16-test | 32x48 | 1 |' in text
    main([
        '--tiny', '--models', 'openclip', '--sizes', '16x16', '--iters', '1',
        '--warmup', '0', '--write',
        str(doc)
    ])
    text = doc.read_text()
    assert text.count(SECTION) == 1 and '32x48' not in text
    assert 'keep me' in text
