"""The one ViT tower adapter against each family's own forward."""
import pytest
import torch

from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME, create_model)
from plugins.models.vit_tower import (OpenCLIPViTTower, TimmViTTower,
                                      build_vit_tower)


@pytest.fixture(scope='module')
def open_clip_tower():
    torch.manual_seed(0)
    return build_vit_tower(create_model(OPEN_CLIP_TINY_MODEL_NAME).eval())


@pytest.fixture(scope='module')
def timm_tower():
    torch.manual_seed(0)
    return build_vit_tower(create_model(BIOMEDCLIP_TINY_MODEL_NAME).eval())


def test_families(open_clip_tower, timm_tower):
    assert isinstance(open_clip_tower, OpenCLIPViTTower)
    assert isinstance(timm_tower, TimmViTTower)
    with pytest.raises(TypeError, match='expected an open_clip'):
        build_vit_tower(torch.nn.Linear(2, 2))


@torch.no_grad()
def test_open_clip_tokens_match_the_tower(open_clip_tower):
    v = open_clip_tower.visual
    x = torch.rand(2, 3, 224, 224)
    ref = v.ln_post(v.transformer(v._embeds(x)))
    out = open_clip_tower.forward_blocks(open_clip_tower.embed(x), [3])[0]
    torch.testing.assert_close(open_clip_tower.norm(out), ref)
    # pooled embedding equals open_clip's own encode path
    torch.testing.assert_close(open_clip_tower.pool(ref), v(x))


@torch.no_grad()
def test_timm_tokens_match_the_trunk(timm_tower):
    trunk = timm_tower.trunk
    x = torch.rand(2, 3, 224, 224)
    ref = trunk.forward_features(x)
    last = len(timm_tower.blocks) - 1
    out = timm_tower.forward_blocks(timm_tower.embed(x), [last])[0]
    torch.testing.assert_close(timm_tower.norm(out), ref)
    torch.testing.assert_close(timm_tower.pool(ref), timm_tower.visual(x))


@torch.no_grad()
def test_forward_intermediates_any_size(open_clip_tower):
    maps = open_clip_tower.forward_intermediates(
        torch.rand(1, 3, 200, 300), (0, -1), norm=True,
        intermediates_only=True, with_proj=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 13, 19)] * 2
    # the second map is the last block's
    assert not torch.equal(maps[0], maps[1])
    with pytest.raises(ValueError, match='out of range'):
        open_clip_tower.resolve_indices([4])
    with pytest.raises(ValueError, match='multiples of the patch size'):
        open_clip_tower.embed(torch.rand(1, 3, 200, 224))


def test_pos_embed_cached_and_invalidated(open_clip_tower):
    with torch.no_grad():
        a = open_clip_tower.pos_embed((5, 7))
        assert open_clip_tower.pos_embed((5, 7)) is a
        open_clip_tower.visual.positional_embedding.mul_(1.0)  # a new version
        assert open_clip_tower.pos_embed((5, 7)) is not a
    assert open_clip_tower.pos_embed(open_clip_tower.grid_size) is \
        open_clip_tower.visual.positional_embedding


def test_set_trainable_last_blocks(timm_tower):
    timm_tower.set_trainable(train_last_n_blocks=1, with_proj=True)
    trainable = {n for n, p in timm_tower.visual.named_parameters()
                 if p.requires_grad}
    last = len(timm_tower.blocks) - 1
    assert trainable and all(
        n.startswith((f'trunk.blocks.{last}.', 'trunk.norm.', 'head.'))
        for n in trainable)
    timm_tower.set_trainable(frozen=True)
    assert not any(p.requires_grad for p in timm_tower.parameters())
    with pytest.raises(ValueError, match='contradict'):
        timm_tower.set_trainable(frozen=True, train_last_n_blocks=1)
    with pytest.raises(ValueError, match=r'train_last_n_blocks \(9\)'):
        timm_tower.set_trainable(train_last_n_blocks=9)


def test_external_projection(open_clip_tower):
    proj = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False),
                               torch.nn.GELU(),
                               torch.nn.Linear(48, 40, bias=False))
    tower = OpenCLIPViTTower(open_clip_tower.visual, projection=proj)
    assert tower.proj_dims == 40
    assert tower.proj_modules() == [proj]
    tower.set_trainable(frozen=True)
    assert not any(p.requires_grad for p in proj.parameters())


# ----------------------------------------------------------------------
# forward_intermediates speaks timm's language (12 narrow blocks, 224 px)
# ----------------------------------------------------------------------
def _deep_open_clip_visual():
    from open_clip.transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(image_size=224, patch_size=16, width=32,
                             layers=12, heads=2, mlp_ratio=2.0,
                             output_dim=16).eval()


def _deep_timm_visual(**trunk_kwargs):
    from open_clip.timm_model import TimmModel
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    visual = TimmModel('test_vit', embed_dim=16, image_size=224, pool='',
                       proj='linear')
    # same width as test_vit (the head's input), 12 blocks
    visual.trunk = VisionTransformer(img_size=224, patch_size=16,
                                     embed_dim=64, depth=12, num_heads=2,
                                     mlp_ratio=2.0, num_classes=0,
                                     **trunk_kwargs)
    return visual.eval()


INDICES = [2, [0, 5, 11]]


@pytest.mark.parametrize('norm', [False, True])
@pytest.mark.parametrize('indices', INDICES, ids=['last2', 'list'])
@torch.no_grad()
def test_open_clip_forward_intermediates_equal_open_clips(indices, norm):
    visual = _deep_open_clip_visual()
    tower = OpenCLIPViTTower(visual)
    assert isinstance(tower, torch.nn.Module)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for fmt in ('NCHW', 'NLC'):
        ref = visual.forward_intermediates(
            x, indices=indices, normalize_intermediates=norm,
            intermediates_only=True, output_fmt=fmt)['image_intermediates']
        ours = tower.forward_intermediates(x, indices=indices, norm=norm,
                                           output_fmt=fmt,
                                           intermediates_only=True)
        assert isinstance(ours, list) and len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # not intermediates_only: (final normed tokens, maps), as timm
    final, maps = tower.forward_intermediates(x, indices=indices, norm=norm)
    torch.testing.assert_close(final, visual.ln_post(
        visual.transformer(visual._embeds(x))), rtol=0, atol=1e-5)
    torch.testing.assert_close(maps[-1], ref[-1].transpose(1, 2).reshape(
        maps[-1].shape), rtol=0, atol=1e-5)


@pytest.mark.parametrize('trunk_kwargs', [{}, dict(reg_tokens=2,
                                                   no_embed_class=True)],
                         ids=['cls', 'registers'])
@pytest.mark.parametrize('norm', [False, True])
@pytest.mark.parametrize('indices', INDICES, ids=['last2', 'list'])
@torch.no_grad()
def test_timm_forward_intermediates_equal_timms(indices, norm, trunk_kwargs):
    visual = _deep_timm_visual(**trunk_kwargs)
    tower = TimmViTTower(visual)
    assert isinstance(tower, torch.nn.Module)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for stop_early in (False, True):
        for only in (False, True):
            ref = visual.trunk.forward_intermediates(
                x, indices=indices, norm=norm, stop_early=stop_early,
                intermediates_only=only)
            ours = tower.forward_intermediates(
                x, indices=indices, norm=norm, stop_early=stop_early,
                intermediates_only=only)
            assert type(ours) is type(ref)
            if not only:
                torch.testing.assert_close(ours[0], ref[0], rtol=0,
                                           atol=1e-5)
                ours, ref = ours[1], ref[1]
            assert len(ours) == len(ref)
            for a, b in zip(ours, ref):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the open_clip TimmModel wrapper agrees too
    ref = visual.forward_intermediates(
        x, indices=indices, normalize_intermediates=norm,
        intermediates_only=True)['image_intermediates']
    ours = tower.forward_intermediates(x, indices, norm,
                                       intermediates_only=True)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_forward_intermediates_arguments(open_clip_tower):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r'indices=5 \(the last n blocks\)'):
        open_clip_tower.forward_intermediates(x, 5)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        open_clip_tower.forward_intermediates(x, 1, output_fmt='NHWC')
    with pytest.raises(ValueError, match='pass norm=True'):
        open_clip_tower.forward_intermediates(x, 1, with_proj=True)
    with torch.no_grad():
        maps = open_clip_tower.forward_intermediates(
            x, None, intermediates_only=True)
    assert len(maps) == len(open_clip_tower.blocks)


def test_tower_modules_keep_the_image_towers_keys(open_clip_tower):
    keys = set(open_clip_tower.state_dict())
    assert keys == {f'visual.{k}'
                    for k in open_clip_tower.visual.state_dict()}


# ----------------------------------------------------------------------
# issue 25.5: image dtypes are checked in one place, for every tower
# ----------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [torch.uint8, torch.float16,
                                   torch.float64])
def test_image_dtype_is_named(open_clip_tower, timm_tower, dtype):
    x = torch.zeros(1, 3, 32, 32).to(dtype)
    for tower in (open_clip_tower, timm_tower):
        with pytest.raises(TypeError) as info:
            tower.forward_intermediates(x, 1)
        msg = str(info.value)
        assert str(dtype) in msg and 'torch.float32' in msg
    # under autocast a 16-bit float input is the autocast's job
    if dtype == torch.float16:
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            open_clip_tower.forward_intermediates(x, 1)
    else:
        with torch.autocast('cpu', dtype=torch.bfloat16), \
                pytest.raises(TypeError, match=str(dtype)):
            open_clip_tower.forward_intermediates(x, 1)
