"""SurgeryCLIPBackbone: equals OpenCLIPBackbone at depth 0, dual path
otherwise; shapes, freezing, weights."""
import pytest
import torch
from mmdet.registry import MODELS

from plugins.mmdet_custom.models.backbones import (OpenCLIPBackbone,
                                                  SurgeryCLIPBackbone)
from plugins.models import OPEN_CLIP_TINY_MODEL_NAME
from plugins.models.clip_surgery import SurgeryCLIPVisual, surgery_forward
from plugins.utils import StateDictMismatchError
from tests.helpers import randn_images

TINY = OPEN_CLIP_TINY_MODEL_NAME  # width 64, 4 blocks, patch 16, embed 32


@pytest.fixture(scope='module')
def plain():
    torch.manual_seed(0)
    return OpenCLIPBackbone(TINY).eval()


@pytest.fixture(scope='module')
def tiny(plain):
    model = SurgeryCLIPBackbone(TINY, surgery_depth=2).eval()
    model.load_state_dict(plain.state_dict())
    return model


def test_depth_zero_equals_the_open_clip_backbone(plain):
    # same position-embedding resampling as OpenCLIPBackbone's (CLIP
    # Surgery's own default is bilinear, see test_pos_embed_interp_defaults)
    model = SurgeryCLIPBackbone(
        TINY, surgery_depth=0, pos_embed_interp='open_clip').eval()
    model.load_state_dict(plain.state_dict())
    for size in ((224, 224), (320, 480)):
        x = randn_images(*size)
        with torch.no_grad():
            torch.testing.assert_close(
                model(x)[0], plain(x)[0], rtol=0, atol=0)


def test_surgery_output_differs_and_original_path_is_untouched(tiny, plain):
    x = randn_images(224, 224)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with torch.no_grad():
        ours = tiny(x)[0]
        ref = plain(x)[0]
        assert (ours - ref).abs().max() > 1e-2
        # the original path through the same blocks is CLIP's
        tokens = tiny.embed_tokens(*tiny.prepare_input(x))
        _, x_ori = surgery_forward(tiny.blocks, tokens, 2, keep_original=True)
        plain_tokens = tokens
        for blk in plain.blocks:
            plain_tokens = blk(plain_tokens)
        torch.testing.assert_close(x_ori, plain_tokens, rtol=0, atol=0)
    for k, v in tiny.state_dict().items():  # weights unchanged
        assert torch.equal(v, before[k])


def test_agrees_with_the_host_free_tower(tiny):
    x = randn_images(100, 130)
    tower = SurgeryCLIPVisual(tiny.visual, surgery_depth=2)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)[0], tower.forward_map(x))


def test_vit_b_16_default_surgery_depth():
    """The real architecture with the default 6 surgery blocks."""
    torch.manual_seed(0)
    model = SurgeryCLIPBackbone('ViT-B-16', frozen=True).eval()
    assert model.surgery_depth == 6 and model.surgery_start == 6
    x = randn_images(224, 224, batch=1)
    with torch.no_grad():
        out = model(x)[0]
        ref = SurgeryCLIPVisual(model.visual, 6).forward_map(x)
    assert out.shape == (1, 768, 14, 14)
    torch.testing.assert_close(out, ref)


def test_out_indices_before_the_surgery_blocks_are_clips(tiny, plain):
    model = SurgeryCLIPBackbone(
        TINY, surgery_depth=2, out_indices=(1, 2, 3)).eval()
    model.load_state_dict(plain.state_dict())
    ref_model = OpenCLIPBackbone(
        TINY, out_indices=(1, ), pos_embed_interp='clip_surgery').eval()
    ref_model.load_state_dict(plain.state_dict())
    x = randn_images(64, 96)
    with torch.no_grad():
        outs = model(x)
        torch.testing.assert_close(outs[0], ref_model(x)[0])
        torch.testing.assert_close(outs[2], tiny(x)[0])
    assert [tuple(o.shape) for o in outs] == [(2, 64, 4, 6)] * 3


@pytest.mark.parametrize('size,grid', [((224, 224), (14, 14)),
                                       ((320, 480), (20, 30)),
                                       ((230, 97), (15, 7))])
def test_output_shapes(tiny, size, grid):
    with torch.no_grad():
        assert [tuple(o.shape) for o in tiny(randn_images(*size))] == \
            [(2, 64, *grid)]
    assert tiny.out_channels == 64 and tiny.out_strides == 16


def test_with_proj(plain):
    model = SurgeryCLIPBackbone(TINY, surgery_depth=2, with_proj=True)
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out = model.eval()(randn_images(64, 64))[0]
    assert out.shape == (2, 32, 4, 4) and model.out_channels == 32


def test_frozen_has_no_trainable_parameter():
    model = SurgeryCLIPBackbone(TINY, surgery_depth=2, frozen=True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_train_last_n_blocks_trains_the_last_two():
    model = SurgeryCLIPBackbone(
        TINY, surgery_depth=2, train_last_n_blocks=2).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last_two = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(('visual.transformer.resblocks.2.',
                         'visual.transformer.resblocks.3.', 'visual.ln_post.'))
    }
    # the last block's FFN feeds only the (dropped) class token: frozen
    unused = {
        n
        for n in last_two
        if n.startswith(('visual.transformer.resblocks.3.mlp.',
                         'visual.transformer.resblocks.3.ln_2.'))
    }
    assert unused and trainable == last_two - unused
    assert not model.visual.transformer.resblocks[1].training
    model(randn_images(32, 48))[0].sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if n in trainable)


def test_every_trainable_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs this."""
    model = SurgeryCLIPBackbone(TINY, surgery_depth=2).train()
    model(randn_images(32, 48))[0].square().mean().backward()
    missing = [
        n for n, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert not missing


@pytest.mark.parametrize('fmt', ['safetensors', 'bin', 'openai'])
def test_weights_round_trip_every_format(tiny_clip_files, fmt):
    model, files = tiny_clip_files
    # OpenAI's files need the activation they were trained with
    backbone = SurgeryCLIPBackbone(
        TINY, surgery_depth=2, pretrained=str(files[fmt]),
        quick_gelu=fmt == 'openai')
    backbone.init_weights()  # the runner's call before training
    ref = {'visual.' + k: v for k, v in model.visual.state_dict().items()}
    state = backbone.state_dict()
    assert set(state) == set(ref) | {'activation'}  # strict load
    atol = 1e-3 if fmt == 'openai' else 0  # OpenAI archives are fp16
    for key in ref:
        torch.testing.assert_close(state[key], ref[key], rtol=0, atol=atol)


def test_wrong_layout_error_lists_keys(tmp_path, tiny_clip_files):
    model, _ = tiny_clip_files
    wrong = {
        k.replace('visual.transformer.resblocks', 'blocks'): v
        for k, v in model.state_dict().items()
    }
    torch.save(wrong, tmp_path / 'wrong.bin')
    with pytest.raises(StateDictMismatchError) as info:
        SurgeryCLIPBackbone(
            TINY, surgery_depth=2,
            pretrained=str(tmp_path / 'wrong.bin')).init_weights()
    msg = str(info.value)
    assert 'missing keys: [visual.transformer.resblocks.0.' in msg
    assert 'unexpected keys: [blocks.0.' in msg


def test_bad_arguments():
    with pytest.raises(ValueError, match=r'surgery_depth \(6\).*\(4\)'):
        SurgeryCLIPBackbone(TINY)  # the default 6 > 4 tiny blocks
    with pytest.raises(ValueError, match=r'surgery_depth \(-1\)'):
        SurgeryCLIPBackbone(TINY, surgery_depth=-1)


def test_registered_with_clip_normalisation():
    model = MODELS.build(
        dict(
            type='SurgeryCLIPBackbone',
            model_name=TINY,
            surgery_depth=2,
            frozen=True))
    assert isinstance(model, SurgeryCLIPBackbone)
    assert model.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert model.patch_size == 16


def test_pos_embed_interp_defaults_follow_each_upstream(plain):
    """SurgeryCLIP resamples like CLIP Surgery (bilinear), OpenCLIP like
    open_clip (bicubic, anti-aliased); the tower outside mmdet agrees."""
    import torch.nn.functional as F

    from plugins.utils import pos_embed_interp_args, resample_pos_embed
    model = SurgeryCLIPBackbone(TINY, surgery_depth=2).eval()
    model.load_state_dict(plain.state_dict())
    assert model.pos_embed_interp == 'clip_surgery'
    assert plain.pos_embed_interp == 'open_clip'
    pos = model.visual.positional_embedding.detach()
    # 320x320 with patch 16: 14x14 -> 20x20, CLIP Surgery's bilinear resize
    spatial = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, (20, 20), mode='bilinear',
                            align_corners=False)
    ref = torch.cat([pos[:1], spatial.flatten(2)[0].t()])
    open_ = resample_pos_embed(pos, (20, 20), (14, 14),
                               **pos_embed_interp_args('open_clip'))
    tower = SurgeryCLIPVisual(model.visual, surgery_depth=2).eval()
    assert tower.pos_embed_interp == 'clip_surgery'
    x = randn_images(320, 320)
    with torch.no_grad():
        torch.testing.assert_close(model.tower.pos_embed((20, 20)), ref,
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(plain.tower.pos_embed((20, 20)), open_,
                                   rtol=0, atol=0)
        assert (open_ - ref).abs().max() > 1e-3
        torch.testing.assert_close(model(x)[0], tower.forward_map(x),
                                   rtol=0, atol=1e-5)


def test_pos_embed_interp_typo_fails_at_construction():
    with pytest.raises(ValueError, match="'bilinaer'"):
        SurgeryCLIPBackbone(TINY, surgery_depth=2, pos_embed_interp='bilinaer')
