"""window_size / global_blocks of every CLIP backbone: global attention when
the window covers the grid, windowed otherwise, with padding, gradient
checkpointing, partial unfreezing and the CLIP Surgery path."""
import pytest
import torch
from mmdet.registry import MODELS

from plugins.mmdet_custom.models.backbones import (BiomedCLIPBackbone,
                                                  ConceptCLIPBackbone,
                                                  OpenCLIPBackbone,
                                                  SurgeryCLIPBackbone)
from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            CONCEPT_CLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME)
from tests.helpers import assert_checkpointing_keeps_gradients, randn_images

# tiny test towers: 4 blocks (open_clip, ConceptCLIP), 6 (BiomedCLIP's timm)
BACKBONES = {
    'openclip': (OpenCLIPBackbone,
                 dict(model_name=OPEN_CLIP_TINY_MODEL_NAME)),
    'biomedclip': (BiomedCLIPBackbone,
                   dict(model_name=BIOMEDCLIP_TINY_MODEL_NAME)),
    'surgeryclip': (SurgeryCLIPBackbone,
                    dict(model_name=OPEN_CLIP_TINY_MODEL_NAME,
                         surgery_depth=2)),
    'conceptclip': (ConceptCLIPBackbone,
                    dict(model_name=CONCEPT_CLIP_TINY_MODEL_NAME)),
}


def _build(name, **kwargs):
    cls, args = BACKBONES[name]
    torch.manual_seed(0)
    return cls(**args, **kwargs)


def _pair(name, **kwargs):
    """The global backbone and a windowed one with the same weights."""
    ref = _build(name, out_indices=(1, -1))
    model = _build(name, out_indices=(1, -1), **kwargs)
    model.load_state_dict(ref.state_dict())
    return ref, model


@pytest.mark.parametrize('name', list(BACKBONES))
@torch.no_grad()
def test_window_covering_the_grid_equals_global_attention(name):
    ref, model = _pair(name, window_size=33, global_blocks=(1, ))
    assert model.window_size == 33 and model.global_blocks == (1, )
    x = randn_images(300, 460)  # grid 19 x 29 (patch 16) / 22 x 33 (patch 14)
    for a, b in zip(model.eval()(x), ref.eval()(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', list(BACKBONES))
@torch.no_grad()
def test_smaller_windows_differ_and_pad(name):
    # window 4 over a 19 x 29 grid: padded to 20 x 32, 5 x 8 windows
    ref, model = _pair(name, window_size=4, global_blocks=(-1, ))
    x = randn_images(300, 460)
    outs, refs = model.eval()(x), ref.eval()(x)
    for a, b in zip(outs, refs):
        assert a.shape == b.shape
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() > 1e-4


def test_no_windows_by_default_and_vitdet_global_blocks():
    model = _build('openclip')
    assert model.window_size is None and model.global_blocks == ()
    model = OpenCLIPBackbone('ViT-B-16', window_size=14)
    assert model.global_blocks == (2, 5, 8, 11)


# The one checkpointing test of the backbones: global and windowed blocks.
@pytest.mark.parametrize('window', [{}, dict(window_size=3,
                                             global_blocks=(1, ))],
                         ids=['global', 'windowed'])
@pytest.mark.parametrize('name', ['openclip', 'surgeryclip', 'biomedclip'])
def test_gradient_checkpointing_gives_the_same_gradients(name, window):
    def build(with_cp):
        torch.manual_seed(0)
        return _build(name, with_cp=with_cp, **window).train()

    # grid 5 x 7: padded to 6 x 9 windows of 3
    x = randn_images(80, 112)
    assert_checkpointing_keeps_gradients(
        build, lambda m: sum(o.square().mean() for o in m(x)))


@pytest.mark.parametrize('name', ['openclip', 'surgeryclip'])
def test_train_last_n_blocks_is_unaffected(name):
    plain = _build(name, train_last_n_blocks=2)
    model = _build(name, train_last_n_blocks=2, window_size=2,
                   global_blocks=(0, ))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n
        for n, p in plain.named_parameters() if p.requires_grad
    }
    model.train()
    model(randn_images(64, 96))[0].sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got and got <= trainable
    assert any(n.startswith('visual.transformer.resblocks.3.') for n in got)


def test_registered_config_builds_windowed():
    model = MODELS.build(
        dict(
            type='OpenCLIPBackbone',
            model_name=OPEN_CLIP_TINY_MODEL_NAME,
            window_size=7,
            global_blocks=[-1]))
    assert model.window_size == 7 and model.global_blocks == (3, )


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(window_size=0), ValueError, 'window_size must be >= 1'),
    (dict(window_size=-3), ValueError, 'window_size must be >= 1'),
    (dict(window_size='14'), TypeError, 'window_size must be an int'),
    (dict(window_size=14, global_blocks=(4, )), ValueError,
     'global_blocks entry 4 is out of range for 4 blocks'),
    (dict(window_size=14, global_blocks=(-5, )), ValueError,
     'entry -5 is out of range'),
    (dict(global_blocks=(1, )), ValueError, 'needs window_size'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _build('openclip', **kwargs)


# issue 25.5: every backbone names the image and weight dtypes, in one place
# (the tower's check), before anything runs
@pytest.mark.parametrize('dtype', [torch.uint8, torch.float16,
                                   torch.float64])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_image_dtype_is_named(name, dtype):
    model = _build(name).eval()
    with pytest.raises(TypeError) as info:
        model(torch.zeros(1, 3, 64, 64).to(dtype))
    msg = str(info.value)
    assert type(model).__name__ in msg
    assert str(dtype) in msg and 'torch.float32' in msg


# issue 25.9: a huge input is refused before allocating, with the numbers
# and the window_size / global_blocks to set
def test_huge_input_refused_before_allocating():
    model = _build('surgeryclip').eval()
    model.tower.attention_budget = 2**20  # scaled down: 1 MiB
    with pytest.raises(ValueError) as info:
        model(torch.zeros(1, 3, 320, 320))
    msg = str(info.value)
    assert msg.startswith('SurgeryCLIPBackbone: a 320x320 input (20x20 '
                          'patches, 401 tokens, batch 1) needs 1.2 MiB')
    assert 'window_size=14 and global_blocks=()' in msg
    windowed = _build('surgeryclip', window_size=10, global_blocks=())
    windowed.tower.attention_budget = 2**20
    with torch.no_grad():
        assert windowed.eval()(torch.zeros(1, 3, 320, 320))[0].shape == \
            (1, 64, 20, 20)
