"""Windowed attention (ViTDet-style) through the one ViT tower adapter."""
import pytest
import torch

from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME, create_model)
from plugins.models.clip_surgery import surgery_forward
from plugins.models.vit_tower import build_vit_tower
from plugins.models.window_attention import (default_global_blocks,
                                             resolve_global_blocks,
                                             window_partition,
                                             window_unpartition)


def _tower(name):
    torch.manual_seed(0)
    return build_vit_tower(create_model(name).eval())


@pytest.fixture(scope='module')
def open_clip_tower():
    return _tower(OPEN_CLIP_TINY_MODEL_NAME)


@pytest.fixture(scope='module')
def timm_tower():
    return _tower(BIOMEDCLIP_TINY_MODEL_NAME)


def _tokens(tower, grid, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = tower.patch_size
    pixels = torch.randn(batch, 3, grid[0] * p, grid[1] * p, generator=g)
    return tower.embed(pixels)


def test_vitdet_default_global_blocks():
    assert default_global_blocks(12) == (2, 5, 8, 11)
    assert default_global_blocks(24) == (5, 11, 17, 23)
    assert default_global_blocks(32) == (7, 15, 23, 31)
    # one in three for smaller towers (issue 25.9: a windowed tiny tower
    # used to keep all 4 blocks global)
    assert default_global_blocks(6) == (2, 5)
    assert default_global_blocks(4) == (1, 3)
    assert default_global_blocks(3) == (2, )
    assert default_global_blocks(1) == (0, )
    assert resolve_global_blocks((-1, 2), 12) == (2, 11)
    assert resolve_global_blocks((), 12) == ()


@pytest.mark.parametrize('grid,window,prefix', [((5, 7), 3, 1), ((4, 6), 2, 0),
                                                ((3, 3), 8, 2)])
def test_partition_layout_and_round_trip(grid, window, prefix):
    b, c = 2, 4
    x = torch.randn(b, prefix + grid[0] * grid[1], c)
    windows, layout = window_partition(x, grid, prefix, window)
    wh, ww = min(window, grid[0]), min(window, grid[1])
    nw = -(-grid[0] // wh) * -(-grid[1] // ww)
    assert windows.shape == (b * nw, prefix + wh * ww, c)
    # window 0 of image 1 is its top-left wh x ww block, prefix in front
    spatial = x[1, prefix:].reshape(*grid, c)
    first = windows[nw, prefix:].reshape(wh, ww, c)
    torch.testing.assert_close(first, spatial[:wh, :ww])
    torch.testing.assert_close(windows[nw, :prefix], x[1, :prefix])
    torch.testing.assert_close(window_unpartition(windows, layout), x)


def test_extra_tokens_are_copied_into_every_window():
    b, c, grid = 2, 3, (4, 5)
    x = torch.randn(b, 1 + 20 + 2, c)
    windows, layout = window_partition(x, grid, 1, 2, num_extra=2)
    assert windows.shape == (b * 6, 1 + 4 + 2, c)
    torch.testing.assert_close(windows[7, -2:], x[1, -2:])
    torch.testing.assert_close(window_unpartition(windows, layout), x)
    with pytest.raises(ValueError, match='do not match'):
        window_partition(x, grid, 1, 2)


def test_prefix_output_is_the_mean_over_windows():
    x = torch.randn(1, 1 + 16, 3)
    windows, layout = window_partition(x, (4, 4), 1, 2)
    windows = windows.clone()
    windows[:, 0] = torch.arange(4.).view(4, 1)
    assert torch.equal(window_unpartition(windows, layout)[0, 0],
                       torch.full((3, ), 1.5))


def _windowed(tower, window, global_blocks=()):
    """A fresh tower over the same image tower, windowed."""
    fresh = type(tower)(tower.visual)
    fresh.set_window_attention(window, global_blocks)
    return fresh


@pytest.mark.parametrize('family', ['open_clip', 'timm'])
@torch.no_grad()
def test_window_covering_the_grid_is_global_attention(family, open_clip_tower,
                                                      timm_tower):
    tower = open_clip_tower if family == 'open_clip' else timm_tower
    x = _tokens(tower, (5, 7))
    last = len(tower.blocks) - 1
    ref = tower.forward_blocks(x, [0, last])
    for window in (7, 100):
        out = _windowed(tower, window).forward_blocks(x, [0, last], (5, 7))
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('grid', [(6, 6), (5, 7)])
@torch.no_grad()
def test_windowed_block_equals_the_block_on_each_window(timm_tower, grid):
    """An independent reference: block 0 on [cls, window] per window, the
    grid padded with zero tokens to a multiple of 3."""
    tower, w = timm_tower, 3
    x = _tokens(tower, grid, batch=1)
    npfx, c = tower.num_prefix_tokens, x.shape[-1]
    block = tower.blocks[0]
    windowed = _windowed(tower, w)
    assert windowed.is_windowed(0)
    out = windowed.block_caller(grid)(0, block, x)
    gh, gw = grid
    ph, pw = -(-gh // w) * w, -(-gw // w) * w
    padded = x.new_zeros(ph, pw, c)
    padded[:gh, :gw] = x[0, npfx:].reshape(gh, gw, c)
    want = x.new_zeros(ph, pw, c)
    prefix = []
    for r in range(0, ph, w):
        for s in range(0, pw, w):
            win = padded[r:r + w, s:s + w].reshape(1, w * w, c)
            y = block(torch.cat([x[:, :npfx], win], dim=1))
            want[r:r + w, s:s + w] = y[0, npfx:].reshape(w, w, c)
            prefix.append(y[0, :npfx])
    torch.testing.assert_close(out[0, npfx:],
                               want[:gh, :gw].reshape(gh * gw, c))
    torch.testing.assert_close(out[0, :npfx], torch.stack(prefix).mean(0))


@torch.no_grad()
def test_windows_are_local_and_global_blocks_are_not(open_clip_tower):
    tower, grid = open_clip_tower, (4, 4)
    x = _tokens(tower, grid, batch=1)
    y = x.clone()
    # patch (0, 0), in the top-left 2x2 window (not a constant shift, which
    # the blocks' first norm would remove)
    y[0, 1] += 10 * torch.randn(x.shape[-1],
                                generator=torch.Generator().manual_seed(1))

    def spatial(t):
        return t[0, 1:].reshape(4, 4, -1)

    windowed = _windowed(tower, 2)
    a = spatial(windowed.forward_blocks(x, [0], grid)[0])
    b = spatial(windowed.forward_blocks(y, [0], grid)[0])
    assert (a[:2, :2] - b[:2, :2]).abs().max() > 1e-4
    assert torch.equal(a[2:], b[2:]) and torch.equal(a[:, 2:], b[:, 2:])
    # block 0 global: every patch sees the change
    mixed = _windowed(tower, 2, (0, ))
    assert not mixed.is_windowed(0) and mixed.is_windowed(1)
    a = spatial(mixed.forward_blocks(x, [0], grid)[0])
    b = spatial(mixed.forward_blocks(y, [0], grid)[0])
    assert (a[2:, 2:] - b[2:, 2:]).abs().max() > 1e-4


@torch.no_grad()
def test_tower_option_and_forward_intermediates(open_clip_tower):
    tower = _tower(OPEN_CLIP_TINY_MODEL_NAME)
    pixels = torch.randn(1, 3, 80, 112)  # grid 5 x 7

    def last_map():
        return tower.forward_intermediates(pixels, 1, norm=True,
                                           intermediates_only=True)[0]

    ref = last_map()
    tower.set_window_attention(7, global_blocks=())
    torch.testing.assert_close(last_map(), ref, rtol=1e-6, atol=1e-6)
    tower.set_window_attention(2, global_blocks=(-1, ))
    assert tower.global_blocks == (3, )
    out = last_map()
    assert out.shape == ref.shape and not torch.allclose(out, ref)
    with pytest.raises(ValueError, match='needs the patch grid'):
        tower.forward_blocks(tower.embed(pixels), [3])
    # the tiny tower's default global blocks leave some blocks windowed
    tower.set_window_attention(2)
    assert tower.global_blocks == (1, 3)
    tower.set_window_attention(None)
    torch.testing.assert_close(last_map(), ref)


def test_surgery_branch_is_windowed_too(open_clip_tower):
    tower, grid = _windowed(open_clip_tower, 3, (1, )), (5, 7)
    x = _tokens(tower, grid)
    seen = []
    base = tower.block_caller(grid)

    def record(index, fn, t):
        def run(u):
            seen.append((index, type(fn).__name__, u.shape[0]))
            return fn(u)
        return base(index, run, t)

    with torch.no_grad():
        surgery_forward(tower.blocks, x, 2, [3], call=record)
    # blocks 0, 2 windowed (2 images x 2 x 3 windows), 1 global; surgery
    # blocks 2 (branch, then block: BlockHook.branch, both windowed) and 3
    # (branch only, windowed)
    assert seen == [(0, 'ResidualAttentionBlock', 12),
                    (1, 'ResidualAttentionBlock', 2),
                    (2, 'partial', 12), (2, 'ResidualAttentionBlock', 12),
                    (3, 'partial', 12)]
    full = _windowed(open_clip_tower, 7)
    with torch.no_grad():
        ref, _ = surgery_forward(tower.blocks, x, 2, [3])
        out, _ = surgery_forward(tower.blocks, x, 2, [3],
                                 call=full.block_caller(grid))
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=1e-6)


def test_bad_arguments(open_clip_tower):
    tower = _tower(OPEN_CLIP_TINY_MODEL_NAME)
    with pytest.raises(ValueError, match='window_size must be >= 1'):
        tower.set_window_attention(0)
    with pytest.raises(TypeError, match='window_size must be an int'):
        tower.set_window_attention(14.0)
    with pytest.raises(ValueError, match='entry 4 is out of range for 4'):
        tower.set_window_attention(14, (1, 4))
    with pytest.raises(ValueError, match='entry -5 is out of range'):
        tower.set_window_attention(14, (-5, ))
    with pytest.raises(ValueError, match='names block 3 twice'):
        tower.set_window_attention(14, (3, -1))
    with pytest.raises(ValueError, match='needs window_size'):
        tower.set_window_attention(None, (1, ))


# ----------------------------------------------------------------------
# issue 25.9: refuse an input whose attention exceeds the budget, before
# allocating, naming the numbers and what to set
# ----------------------------------------------------------------------
def test_attention_budget_refuses_before_allocating(open_clip_tower):
    tower = _tower(OPEN_CLIP_TINY_MODEL_NAME)
    # 4000 x 4000: a 250 x 250 grid, 62501 tokens, 2 heads, float32
    need = 2 * 62501**2 * 4
    with pytest.raises(ValueError) as info:
        tower.check_attention_budget(1, (250, 250), torch.float32)
    msg = str(info.value)
    assert '4000x4000' in msg and '62501 tokens' in msg
    assert f'{need / 2**30:.1f} GiB' in msg and 'attention_budget' in msg
    assert 'window_size=14 and global_blocks=()' in msg
    # a forward refuses it too: no 4000 x 4000 image is needed, the budget
    # scales down (a 320 x 320 input: 401 tokens, 1.2 MiB per map)
    tower.attention_budget = 2**20
    with pytest.raises(ValueError, match='1.2 MiB for one attention map in '
                       'a global block'):
        tower.forward_intermediates(torch.zeros(1, 3, 320, 320), 1)
    # windowing every block fits: the check follows the windows (4 windows
    # of 101 tokens: 0.3 MiB)
    tower.set_window_attention(10, global_blocks=())
    with torch.no_grad():
        tower.forward_intermediates(torch.zeros(1, 3, 320, 320), 1)
    # with global blocks left, it still refuses (and says where)
    tower.set_window_attention(10, global_blocks=(3, ))
    with pytest.raises(ValueError, match='in a global block'):
        tower.forward_intermediates(torch.zeros(1, 3, 320, 320), 1)
    tower.attention_budget = None  # no check
    with torch.no_grad():
        tower.forward_intermediates(torch.zeros(1, 3, 320, 320), 1)
