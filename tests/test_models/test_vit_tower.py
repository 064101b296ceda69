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
        torch.rand(1, 3, 200, 300), (0, -1), with_proj=True)
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
