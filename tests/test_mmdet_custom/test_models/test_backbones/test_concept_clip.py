"""ConceptCLIPBackbone: parity with the SigLIP-layout timm trunk, shapes,
freezing, weights from a ConceptCLIP HF folder in the released layout."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from mmdet.registry import MODELS

from plugins.mmdet_custom.models.backbones import ConceptCLIPBackbone
from plugins.models.concept_clip import (CONCEPT_CLIP_TINY_MODEL_NAME,
                                         ConceptCLIP)
from plugins.utils import StateDictMismatchError, save_safetensors
from tests.helpers import randn_images

TINY = CONCEPT_CLIP_TINY_MODEL_NAME  # width 64, 4 blocks, patch 14, 112 px

_spec = importlib.util.spec_from_file_location(
    'conceptclip_folder',
    Path(__file__).resolve().parents[3] / 'data' / 'conceptclip_folder.py')
folders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(folders)


def _loaded(backbone):
    """The backbone after the runner's ``init_weights()`` (which reads
    ``pretrained``)."""
    backbone.init_weights()
    return backbone


def _trunk_map(trunk, x, index):
    return trunk.forward_intermediates(
        x, indices=[index], norm=True, intermediates_only=True)[-1]


@pytest.fixture(scope='module')
def concept_clip():
    torch.manual_seed(0)
    return ConceptCLIP(TINY).eval()


@pytest.fixture(scope='module')
def hf_folder(concept_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp('ConceptCLIP')
    save_safetensors(concept_clip.state_dict(), folder / 'model.safetensors')
    return folder


@pytest.fixture(scope='module')
def tiny(hf_folder):
    return _loaded(ConceptCLIPBackbone(TINY, pretrained=str(hf_folder))).eval()


def test_parity_with_the_timm_trunk_at_its_size(tiny):
    x = randn_images(112, 112)
    with torch.no_grad():
        out = tiny(x)[0]
        torch.testing.assert_close(
            out, _trunk_map(tiny.trunk, x, 3), rtol=0, atol=1e-5)
    assert out.shape == (2, 64, 8, 8)


@pytest.mark.parametrize('size', [(224, 224), (98, 140)])
def test_parity_with_timm_dynamic_size(tiny, size):
    """timm resamples its own position embedding with dynamic_img_size;
    ours (padding-free sizes) agrees."""
    ref = timm.create_model(
        'vit_conceptclip_test_patch14_112',
        num_classes=0,
        global_pool='map',
        dynamic_img_size=True).eval()
    ref.load_state_dict(tiny.trunk.state_dict())
    x = randn_images(*size)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny(x)[0], _trunk_map(ref, x, 3), rtol=0, atol=1e-5)


def test_tokens_match_the_models_image_encoder(tiny, concept_clip):
    x = randn_images(112, 112)
    with torch.no_grad():
        _, tokens = concept_clip.encode_image(x)
        ref = tokens.transpose(1, 2).reshape(2, 64, 8, 8)
        torch.testing.assert_close(tiny(x)[0], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize('size,grid', [((224, 224), (16, 16)),
                                       ((320, 480), (23, 35)),
                                       ((384, 384), (28, 28)),
                                       ((378, 378), (27, 27))])
def test_output_shapes(tiny, size, grid):
    with torch.no_grad():
        assert [tuple(o.shape) for o in tiny(randn_images(*size))] == \
            [(2, 64, *grid)]
    assert tiny.out_channels == 64 and tiny.out_strides == 14


def test_padding_equals_explicit_zero_padding(tiny):
    x = randn_images(320, 480)
    padded = torch.nn.functional.pad(x, (0, 10, 0, 2))  # to 322 x 490
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)[0], tiny(padded)[0])


def test_with_proj_uses_image_proj(tiny, concept_clip, hf_folder):
    model = _loaded(ConceptCLIPBackbone(
        TINY, pretrained=str(hf_folder), with_proj=True)).eval()
    x = randn_images(112, 112)
    with torch.no_grad():
        out = model(x)[0]
        _, tokens = concept_clip.encode_image(x)
        ref = concept_clip.image_proj(tokens)  # image_token_features
    assert out.shape == (2, 64, 8, 8) and model.out_channels == 64
    torch.testing.assert_close(
        out, ref.transpose(1, 2).reshape(2, 64, 8, 8), rtol=0, atol=1e-5)
    assert all(p.requires_grad for p in model.image_proj.parameters())
    assert not any(p.requires_grad
               for p in ConceptCLIPBackbone(TINY).image_proj.parameters())


def test_frozen():
    model = ConceptCLIPBackbone(TINY, frozen=True).train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_train_last_n_blocks_trains_exactly_the_last_two():
    model = ConceptCLIPBackbone(TINY, train_last_n_blocks=2).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(('visual.trunk.blocks.2.', 'visual.trunk.blocks.3.',
                         'visual.trunk.norm.'))
    }
    assert trainable == expected
    assert not model.trunk.blocks[1].training
    assert model.trunk.blocks[3].training
    model(randn_images(28, 42))[0].sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if n in expected)


def test_attention_pool_head_is_never_trained():
    model = ConceptCLIPBackbone(TINY)
    pool = model.trunk.attn_pool
    assert pool is not None
    assert not any(p.requires_grad for p in pool.parameters())
    model.train()(randn_images(28, 28))[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters()
               if p.requires_grad)


def test_weights_from_the_hf_folder_match_every_key(tiny, concept_clip):
    state = tiny.state_dict()
    ref = {
        k: v
        for k, v in concept_clip.state_dict().items()
        if k.startswith(('visual.', 'image_proj.'))
    }
    # strict load: nothing missing/extra (+ the backbone's activation record)
    assert set(state) == set(ref) | {'activation'}
    for key in ref:
        torch.testing.assert_close(state[key], ref[key], rtol=0, atol=0)


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_backbone_weights_round_trip(tiny, tmp_path, fmt):
    path = tmp_path / f'backbone.{fmt}'
    if fmt == 'safetensors':
        save_safetensors(tiny.state_dict(), path)
    else:
        torch.save({'state_dict': tiny.state_dict()}, path)
    model = _loaded(ConceptCLIPBackbone(TINY, pretrained=str(path)))
    assert set(model.state_dict()) == set(tiny.state_dict())  # both record
    torch.testing.assert_close(model.image_proj[0].weight, tiny.image_proj[0].weight)


def test_detector_checkpoint_with_prefix(tiny, tmp_path):
    det = {'backbone.' + k: v for k, v in tiny.state_dict().items()}
    det['neck.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': det}, tmp_path / 'det.pth')
    model = _loaded(ConceptCLIPBackbone(
        TINY,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'det.pth'),
            prefix='backbone.')))
    torch.testing.assert_close(model.trunk.pos_embed, tiny.trunk.pos_embed)


def test_wrong_layout_lists_keys_and_key_rules(tiny, tmp_path):
    wrong = {
        k.replace('visual.trunk.', 'vision_model.'): v
        for k, v in tiny.state_dict().items()
    }
    save_safetensors(wrong, tmp_path / 'model.safetensors')
    with pytest.raises(StateDictMismatchError) as info:
        _loaded(ConceptCLIPBackbone(TINY, pretrained=str(tmp_path)))
    msg = str(info.value)
    assert 'missing keys: [visual.trunk.' in msg
    assert 'unexpected keys: [vision_model.' in msg
    assert info.value.missing and info.value.unexpected
    model = _loaded(ConceptCLIPBackbone(
        TINY,
        pretrained=str(tmp_path),
        key_rules=[(r'^vision_model\.', 'visual.trunk.')]))
    torch.testing.assert_close(model.trunk.pos_embed, tiny.trunk.pos_embed)


def test_registered_with_siglip_normalisation():
    model = MODELS.build(
        dict(type='ConceptCLIPBackbone', model_name=TINY, frozen=True))
    assert isinstance(model, ConceptCLIPBackbone)
    assert model.mean == model.std == (0.5, 0.5, 0.5)
    # the configs' DetDataPreprocessor numbers (0-255 units) are these
    from pathlib import Path

    from mmengine.config import Config
    root = Path(__file__).resolve().parents[4]
    cfg = Config.fromfile(root / 'configs/_base_/models/clip_backbones.py'
                          ).conceptclip_data_preprocessor
    assert cfg['mean'] == [m * 255 for m in model.mean]
    assert cfg['std'] == [s * 255 for s in model.std]
    assert cfg['pad_size_divisor'] == model.patch_size == 14


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match='smaller than one 14x14 patch'):
        tiny(randn_images(10, 64))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tiny(torch.rand(2, 1, 28, 28))


# ----------------------------------------------------------------------
# The released layout (tests/data), recomputed with timm
# ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def real_layout():
    layout = folders.load_layout(folders.TINY)
    return layout, folders.random_state(layout, seed=3)


@pytest.mark.parametrize('sharded', [False, True])
def test_real_layout_folder_loads_the_image_tower_and_image_proj(
        real_layout, tmp_path, sharded):
    """The same HF folder as the host-free model: single or sharded
    safetensors; ``with_proj`` maps are upstream's bias-free GELU MLP of
    the trunk tokens."""
    layout, state = real_layout
    folder = folders.write_folder(tmp_path / 'ConceptCLIP', layout, state,
                                  sharded=sharded)
    x = randn_images(112, 112, batch=2, seed=4)
    ref = folders.reference_outputs(layout, state, x)
    maps = {}
    for with_proj in (False, True):
        model = _loaded(ConceptCLIPBackbone(
            TINY, pretrained=str(folder), with_proj=with_proj)).eval()
        with torch.no_grad():
            maps[with_proj] = model(x)[0]
    as_map = (lambda t: t.transpose(1, 2).reshape(2, 64, 8, 8))
    torch.testing.assert_close(
        maps[False], as_map(ref['image_tokens']), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        maps[True], as_map(ref['image_token_features']), rtol=0, atol=1e-5)
    assert model.proj_dims == 64
    torch.testing.assert_close(model.image_proj[2].weight,
                               state['image_proj.2.weight'])


def test_missing_folder_fails_at_init_weights_naming_it(tmp_path):
    """Building never reads the pretrained folder (testing a trained
    checkpoint does not need it); init_weights (training) fails at once,
    naming the path."""
    missing = tmp_path / 'weights' / 'ConceptCLIP'
    model = ConceptCLIPBackbone(TINY, pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        model.init_weights()
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        ConceptCLIPBackbone(TINY, pretrained=str(tmp_path)).init_weights()


def test_folder_config_json_must_describe_the_same_tower(
        real_layout, tmp_path):
    layout, state = real_layout
    folder = folders.write_folder(tmp_path / 'c', layout, state)
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['vision_cfg']['image_size'] = 224
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError,
                       match=r'vision_cfg.image_size = \(224, 224\) there, '
                       r'\(112, 112\) here'):
        ConceptCLIPBackbone(TINY, pretrained=str(folder)).init_weights()


def test_config_normalisation_is_the_backbones(tiny):
    """The configs' 0-255 DetDataPreprocessor numbers for ConceptCLIP are
    its statistics x 255 (the configs cannot import them)."""
    from mmengine.config import Config
    root = Path(__file__).resolve().parents[4]
    base = Config.fromfile(root / 'configs/_base_/models/clip_backbones.py')
    pre = base.conceptclip_data_preprocessor
    assert pre['mean'] == pytest.approx([m * 255 for m in tiny.mean])
    assert pre['std'] == pytest.approx([s * 255 for s in tiny.std])
    assert pre['pad_size_divisor'] == tiny.patch_size
