"""CLIP Surgery (host-free): value-value attention, dual path, feature
surgery and similarity maps against direct transcriptions of the method."""
import pytest
import torch
import torch.nn as nn

from plugins.models import OPEN_CLIP_TINY_MODEL_NAME, create_model
from plugins.models.clip_surgery import (SurgeryCLIPVisual, build_clip_surgery,
                                         check_surgery_blocks, feature_surgery,
                                         similarity_map, surgery_branch,
                                         surgery_forward,
                                         value_value_attention)
from plugins.models.testing import save_clip_checkpoint
from tests.helpers import assert_checkpointing_keeps_gradients

TINY = OPEN_CLIP_TINY_MODEL_NAME  # width 64, 4 blocks, 2 heads, patch 16


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def clip():
    torch.manual_seed(0)
    return create_model(TINY).eval()


def _naive_vv(attn: nn.MultiheadAttention, x):
    """softmax(v v^T * scale) v per head, written out, then out_proj."""
    c, h = attn.embed_dim, attn.num_heads
    d = c // h
    v = x @ attn.in_proj_weight[2 * c:].T + attn.in_proj_bias[2 * c:]
    heads = []
    for i in range(h):
        vi = v[..., i * d:(i + 1) * d]
        a = torch.softmax(vi @ vi.transpose(-1, -2) * d**-0.5, dim=-1)
        heads.append(a @ vi)
    return attn.out_proj(torch.cat(heads, dim=-1))


def _naive_dual_path(blocks, x, surgery_depth):
    """The method as the issue states it, block by block."""
    start = len(blocks) - surgery_depth
    x_ori, x_sur = x, None
    for i, blk in enumerate(blocks):
        if i >= start:
            vv = _naive_vv(blk.attn, blk.ln_1(x_ori))
            x_sur = (x_ori if x_sur is None else x_sur) + vv
        x_ori = blk(x_ori)
    return x_sur, x_ori


def test_value_value_attention_matches_its_definition(clip):
    attn = clip.visual.transformer.resblocks[0].attn
    x = _randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            value_value_attention(attn, x), _naive_vv(attn, x))


@pytest.mark.parametrize('depth', [1, 2, 4])
def test_surgery_forward_matches_the_method(clip, depth):
    blocks = clip.visual.transformer.resblocks
    x = _randn(2, 10, 64)
    with torch.no_grad():
        (ours, ), ori = surgery_forward(blocks, x, depth, keep_original=True)
        ref_sur, ref_ori = _naive_dual_path(blocks, x, depth)
    torch.testing.assert_close(ours, ref_sur)
    torch.testing.assert_close(ori, ref_ori)


def test_original_path_is_untouched_and_depth_zero_is_plain_clip(clip):
    blocks = clip.visual.transformer.resblocks
    x = _randn(2, 10, 64)
    with torch.no_grad():
        plain = x
        for blk in blocks:
            plain = blk(plain)
        (out0, ), _ = surgery_forward(blocks, x, 0)
        (out2, ), ori2 = surgery_forward(blocks, x, 2, keep_original=True)
    torch.testing.assert_close(out0, plain, rtol=0, atol=0)
    torch.testing.assert_close(ori2, plain, rtol=0, atol=0)
    assert (out2 - plain).abs().max() > 1e-2


def test_out_indices_and_skipped_last_original(clip):
    blocks = clip.visual.transformer.resblocks
    x = _randn(1, 6, 64)
    with torch.no_grad():
        outs, ori = surgery_forward(blocks, x, 2, out_indices=[3, 0, 2])
        assert ori is None  # the last block's original path is not run
        (full, ), _ = surgery_forward(blocks, x, 2, keep_original=True)
        torch.testing.assert_close(outs[0], full)
        torch.testing.assert_close(outs[1], blocks[0](x))  # original path
        (at2, ), _ = surgery_forward(blocks, x, 2, out_indices=[2])
        torch.testing.assert_close(outs[2], at2)


def _branch_first_map(tower, x):
    """forward_map's ops as the loop before the tower module ran them
    (commit bada9f1, whose `make demo` mAP is the recorded one): each
    surgery branch and its residual add before its block."""
    pixels, grid = tower.prepare(x)
    x, blocks = tower.embed(pixels), tower.blocks
    x_sur = None
    for i, blk in enumerate(blocks):
        if i >= tower.surgery_start:
            branch = surgery_branch(blk, x)
            x_sur = x + branch if x_sur is None else x_sur + branch
        if i < len(blocks) - 1:  # the last block's original path is unused
            x = blk(x)
    return tower.tokens_to_map(x_sur, grid)


def test_backward_sums_in_the_order_of_the_branch_first_loop(clip):
    # Same ops, same forward values; but autograd runs the backward of the
    # latest ops first, so whether a surgery branch is built before or
    # after its block decides the order in which the gradients meeting in
    # the block's input are summed.  Block-first changed the gradients of
    # every earlier parameter by ~1e-6 and `make demo`'s mAP from 0.904
    # to 0.872; bit-equal gradients keep the detector's training
    # reproducible.
    tower = SurgeryCLIPVisual(clip.visual, surgery_depth=2).train()
    x = _randn(2, 3, 128, 160, seed=1)
    weight = _randn(2, 64, 8, 10, seed=2)
    grads = []
    for forward in (tower.forward_map, lambda v: _branch_first_map(tower, v)):
        clip.visual.zero_grad()
        pixels = x.clone().requires_grad_()
        (forward(pixels) * weight).sum().backward()
        grads.append({'input': pixels.grad, **{
            n: p.grad.clone()
            for n, p in clip.visual.named_parameters() if p.grad is not None
        }})
    clip.visual.zero_grad()
    ours, ref = grads
    assert ours.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0,
                                   msg=lambda m, n=name: f'{n}: {m}')


def test_check_surgery_blocks(clip):
    blocks = clip.visual.transformer.resblocks
    assert check_surgery_blocks(blocks, 3) == 1
    with pytest.raises(ValueError, match=r'surgery_depth \(5\).*\(4\)'):
        check_surgery_blocks(blocks, 5)
    with pytest.raises(ValueError, match=r'surgery_depth \(-1\)'):
        check_surgery_blocks(blocks, -1)
    with pytest.raises(TypeError, match='ResidualAttentionBlock'):
        check_surgery_blocks([nn.Linear(2, 2)], 1)


def test_visual_class_token_is_clips_and_maps_have_grid_shape(clip):
    tower = SurgeryCLIPVisual(clip.visual, surgery_depth=2).eval()
    x = _randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = tower(x)
        pooled = clip.visual(x)  # open_clip's own image embedding
        assert tokens.shape == (2, 197, 32)
        torch.testing.assert_close(tokens[:, 0], pooled, rtol=0, atol=1e-5)
        assert tower(x, normalize=True).norm(dim=-1).sub(1).abs().max() \
            < 1e-5
        assert tower.forward_map(_randn(2, 3, 100, 130)).shape == \
            (2, 64, 7, 9)
        assert tower.forward_map(x, with_proj=True).shape == (2, 32, 14, 14)


def test_visual_depth_zero_equals_open_clip_intermediates(clip):
    tower = SurgeryCLIPVisual(clip.visual, surgery_depth=0)
    x = _randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = clip.visual.forward_intermediates(
            x,
            indices=[3],
            normalize_intermediates=True,
            intermediates_only=True)['image_intermediates'][-1]
        torch.testing.assert_close(tower.forward_map(x), ref)


def test_visual_rejects_bad_inputs(clip):
    tower = SurgeryCLIPVisual(clip.visual, surgery_depth=2)
    with pytest.raises(ValueError, match='smaller than one 16x16 patch'):
        tower(_randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tower(_randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match='VisionTransformer'):
        SurgeryCLIPVisual(nn.Linear(2, 2))


# Plain, and windowed (2 x 2 windows, block 1 global) on a 4 x 6 grid.
@pytest.mark.parametrize('size,window', [((48, 64), {}),
                                         ((64, 96), dict(window_size=2,
                                                         global_blocks=[1]))],
                         ids=['global', 'windowed'])
def test_gradient_checkpointing_gives_the_same_gradients(clip, size, window):
    x = _randn(1, 3, *size)

    def build(cp):
        tower = SurgeryCLIPVisual(clip.visual, surgery_depth=2,
                                  **window).train()
        tower.set_grad_checkpointing(cp)
        clip.visual.zero_grad()
        return tower

    assert_checkpointing_keeps_gradients(
        build, lambda t: t.forward_map(x).square().mean())
    clip.visual.zero_grad()


def test_windowed_attention_covering_the_grid_is_global(clip):
    # A window as large as the (padded) grid is global attention; a small
    # one changes the surgery map, and both paths run on the windows.
    x = _randn(1, 3, 96, 128)  # 6 x 8 patches
    plain = SurgeryCLIPVisual(clip.visual, surgery_depth=2).eval()
    whole = SurgeryCLIPVisual(clip.visual, surgery_depth=2, window_size=8,
                              global_blocks=[3]).eval()
    small = SurgeryCLIPVisual(clip.visual, surgery_depth=2).eval()
    small.set_window_attention(2, [3])
    with torch.no_grad():
        ref_map, ref_tokens = plain.forward_map(x), plain(x)
        torch.testing.assert_close(whole.forward_map(x), ref_map,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(whole(x), ref_tokens, rtol=1e-5,
                                   atol=1e-5)
        assert (small.forward_map(x) - ref_map).abs().max() > 1e-3
        assert (small(x) - ref_tokens).abs().max() > 1e-3
    small.set_window_attention(None)
    with torch.no_grad():
        torch.testing.assert_close(small.forward_map(x), ref_map)
    with pytest.raises(ValueError, match='global_blocks'):
        SurgeryCLIPVisual(clip.visual, surgery_depth=2, global_blocks=[3])


def _naive_feature_surgery(tokens, text, t=2.0):
    """The issue's sentence, one image and one class at a time."""
    out = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, text.shape[0])
    for b in range(tokens.shape[0]):
        cls, patches = tokens[b, 0], tokens[b, 1:]
        prob = torch.softmax(t * (text @ cls), dim=0)
        w = prob / prob.mean()
        prods = [patches * text[c] * w[c] for c in range(text.shape[0])]
        mean = sum(prods) / len(prods)
        for c, p in enumerate(prods):
            out[b, :, c] = (p - mean).sum(-1)
    return out


def test_feature_surgery_matches_its_definition():
    tokens = nn.functional.normalize(_randn(2, 1 + 6, 8), dim=-1)
    text = nn.functional.normalize(_randn(3, 8, seed=1), dim=-1)
    sim = feature_surgery(tokens, text)
    assert sim.shape == (2, 6, 3)
    torch.testing.assert_close(sim, _naive_feature_surgery(tokens, text))
    # per image: batching changes nothing
    torch.testing.assert_close(sim[1:], feature_surgery(tokens[1:], text))
    # removing the class-shared part: similarities sum to 0 over classes
    assert sim.sum(-1).abs().max() < 1e-5


def test_feature_surgery_with_redundant_features_and_errors():
    tokens = _randn(1, 5, 8)
    text = _randn(2, 8, seed=1)
    empty = _randn(8, seed=2)
    torch.testing.assert_close(
        feature_surgery(tokens, text, redundant_features=empty),
        tokens[:, 1:] @ (text - empty).T)
    with pytest.raises(ValueError, match=r'\(T, D\)'):
        feature_surgery(tokens, _randn(2, 7))


def test_similarity_map_normalises_and_upsamples():
    sim = _randn(2, 12, 3)
    maps = similarity_map(sim, (30, 40), grid=(3, 4))
    assert maps.shape == (2, 3, 30, 40)
    assert maps.min() >= 0 and maps.max() <= 1
    nearest = similarity_map(sim, (3, 4), grid=(3, 4), mode='nearest')
    flat = nearest.flatten(2).transpose(1, 2)  # back to (B, N, T)
    assert torch.allclose(flat.amin(1), torch.zeros(2, 3))
    assert torch.allclose(flat.amax(1), torch.ones(2, 3))
    assert torch.argmax(flat[0, :, 0]) == torch.argmax(sim[0, :, 0])
    const = similarity_map(torch.ones(1, 4, 1), 8)  # square grid default
    assert const.shape == (1, 1, 8, 8) and torch.isfinite(const).all()
    with pytest.raises(ValueError, match='do not fill a 3x3 grid'):
        similarity_map(sim, 8, grid=(3, 3))


def test_build_clip_surgery_from_a_local_checkpoint(clip, tmp_path):
    path = save_clip_checkpoint(clip, tmp_path, 'safetensors')
    tower, model, preprocess, tokenizer = build_clip_surgery(
        TINY, str(path), surgery_depth=2)
    torch.testing.assert_close(model.visual.proj, clip.visual.proj)
    x = _randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = tower(x, normalize=True)
        text = model.encode_text(tokenizer(['a cat', 'a dog']), normalize=True)
        maps = similarity_map(feature_surgery(tokens, text), 224)
    assert maps.shape == (1, 2, 224, 224)
