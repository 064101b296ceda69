"""resample_pos_embed: shapes, prefix tokens, agreement with timm, and the
pos_embed_interp presets against each upstream's resampling."""
import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plugins.utils import (POS_EMBED_INTERP_PRESETS, pos_embed_interp_args,
                           resample_pos_embed)


@pytest.mark.parametrize('leading', [(), (1, )])
def test_same_grid_is_identity(leading):
    pos = torch.randn(*leading, 1 + 14 * 14, 8)
    assert resample_pos_embed(pos, (14, 14), (14, 14)) is pos


@pytest.mark.parametrize('leading', [(), (1, )])
@pytest.mark.parametrize('new', [(20, 30), (3, 5), (14, 14)])
def test_shapes_and_prefix_kept(leading, new):
    pos = torch.randn(*leading, 2 + 14 * 14, 8)
    out = resample_pos_embed(pos, new, (14, 14), num_prefix_tokens=2)
    assert out.shape == (*leading, 2 + new[0] * new[1], 8)
    assert torch.equal(out[..., :2, :], pos[..., :2, :])


def test_matches_timm_resample():
    from timm.layers import resample_abs_pos_embed
    pos = torch.randn(1, 1 + 10 * 10, 16)
    for new in [(14, 14), (6, 9)]:
        ours = resample_pos_embed(pos, new, (10, 10), num_prefix_tokens=1)
        ref = resample_abs_pos_embed(
            pos, new_size=new, old_size=(10, 10), num_prefix_tokens=1)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_half_precision_and_gradient():
    pos = torch.randn(1 + 4, 8, dtype=torch.float16, requires_grad=True)
    out = resample_pos_embed(pos, (3, 3), (2, 2))
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert pos.grad is not None


def test_wrong_token_count():
    with pytest.raises(ValueError, match='spatial tokens'):
        resample_pos_embed(torch.randn(51, 8), (4, 4), (7, 7))


# ---------------------------------------------------------------------------
# pos_embed_interp presets: each upstream's own resampling
# (facts in tests/data/pos_embed_interp_upstream.json)
# ---------------------------------------------------------------------------
UPSTREAM = json.loads((Path(__file__).resolve().parents[1] / 'data' /
                       'pos_embed_interp_upstream.json').read_text())
# ViT-B/16: 224 -> 14x14 grid; 320x320 -> 20x20; 160x160 -> 10x10 (shrinks)
GRIDS = [(20, 20), (10, 10)]


@pytest.mark.parametrize('name', ['open_clip', 'timm', 'clip_surgery'])
def test_presets_are_the_upstream_facts(name):
    fact = UPSTREAM[name]
    assert pos_embed_interp_args(name) == dict(
        interpolation=fact['mode'], antialias=fact['antialias'])
    assert fact['align_corners'] is False  # what resample_pos_embed uses


@pytest.mark.parametrize('grid', GRIDS)
def test_open_clip_preset_matches_open_clip_resize(grid):
    from open_clip.model import resize_pos_embed
    pos = torch.randn(1 + 14 * 14, 32)
    state = {'visual.positional_embedding': pos.clone()}
    model = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=grid))
    resize_pos_embed(state, model)  # open_clip's defaults
    ours = resample_pos_embed(pos, grid, (14, 14),
                              **pos_embed_interp_args('open_clip'))
    torch.testing.assert_close(ours, state['visual.positional_embedding'],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize('grid', GRIDS)
def test_timm_preset_matches_timm_resample(grid):
    from timm.layers import resample_abs_pos_embed
    pos = torch.randn(1, 1 + 14 * 14, 32)
    ref = resample_abs_pos_embed(pos, new_size=grid, old_size=(14, 14),
                                 num_prefix_tokens=1)  # timm's defaults
    ours = resample_pos_embed(pos, grid, (14, 14),
                              **pos_embed_interp_args('timm'))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize('grid', GRIDS)
def test_clip_surgery_preset_matches_its_bilinear_resize(grid):
    """CLIP Surgery: F.interpolate(grid, size, mode='bilinear') on the
    spatial part, class token kept (independent of our code path)."""
    fact = UPSTREAM['clip_surgery']
    pos = torch.randn(1 + 14 * 14, 32)
    spatial = pos[1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, grid, mode=fact['mode'],
                            align_corners=fact['align_corners'],
                            antialias=fact['antialias'])
    ref = torch.cat([pos[:1], spatial.reshape(32, -1).t()])
    ours = resample_pos_embed(pos, grid, (14, 14),
                              **pos_embed_interp_args('clip_surgery'))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # the presets differ measurably: the choice matters
    bicubic = resample_pos_embed(pos, grid, (14, 14))
    assert (bicubic - ours).abs().max() > 1e-2


def test_interp_specs_and_errors():
    assert pos_embed_interp_args('bilinear') == dict(
        interpolation='bilinear', antialias=False)
    assert pos_embed_interp_args(dict(mode='bicubic', antialias=True)) == \
        POS_EMBED_INTERP_PRESETS['open_clip']
    with pytest.raises(ValueError, match="'bicubik'"):
        pos_embed_interp_args('bicubik')
    with pytest.raises(ValueError, match='F.interpolate mode'):
        pos_embed_interp_args(dict(mode='open_clip'))
    with pytest.raises(ValueError, match='mode='):
        pos_embed_interp_args(dict(interpolation='bilinear'))
    with pytest.raises(TypeError, match='str or a dict'):
        pos_embed_interp_args(3)
    out = resample_pos_embed(torch.randn(1 + 4, 8), (3, 3), (2, 2),
                             interpolation='nearest', antialias=False)
    assert out.shape == (1 + 9, 8)
