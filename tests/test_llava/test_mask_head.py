"""Mask head shapes and the mask losses."""
import pytest
import torch

from plugins.llava.losses import mask_bce_loss, mask_dice_loss
from plugins.llava.mask_head import PixelDecoder, SegTokenMaskHead


def _swin_maps(batch=2, size=64, channels=(16, 32, 64, 128)):
    return [torch.randn(batch, c, size // s, size // s)
            for c, s in zip(channels, (4, 8, 16, 32))]


def test_pixel_decoder_shape():
    decoder = PixelDecoder([16, 32, 64, 128], mask_dim=32)
    out = decoder(_swin_maps())
    assert out.shape == (2, 32, 16, 16)


def test_pixel_decoder_accepts_half_maps():
    decoder = PixelDecoder([16, 32, 64, 128], mask_dim=32)
    out = decoder([m.bfloat16() for m in _swin_maps()])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_pixel_decoder_rejects_wrong_level_count():
    decoder = PixelDecoder([16, 32, 64, 128], mask_dim=32)
    with pytest.raises(ValueError, match='expects 4 maps'):
        decoder(_swin_maps()[:3])


def test_seg_mask_head_shapes():
    head = SegTokenMaskHead(hidden_size=48, mask_dim=32)
    pixels = torch.randn(2, 32, 16, 16)
    # Three [SEG] tokens: two in image 0, one in image 1.
    seg = torch.randn(3, 48)
    logits = head(seg, pixels, torch.tensor([0, 0, 1]), (64, 64))
    assert logits.shape == (3, 64, 64)
    same = head(seg, pixels, torch.tensor([0, 0, 1]), (16, 16))
    assert same.shape == (3, 16, 16)


def test_upsampling_logits_equals_dotting_upsampled_features():
    head = SegTokenMaskHead(hidden_size=8, mask_dim=4)
    pixels, seg = torch.randn(1, 4, 8, 8), torch.randn(1, 8)
    logits = head(seg, pixels, torch.tensor([0]), (32, 32))
    up = torch.nn.functional.interpolate(pixels, size=(32, 32),
                                         mode='bilinear', align_corners=False)
    embed = head.seg_proj(seg)
    direct = torch.einsum('sd,dhw->shw', embed, up[0])
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-5)


def test_mask_losses():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert mask_dice_loss(perfect, target) < 1e-3
    assert mask_bce_loss(perfect, target) < 1e-3
    zero = torch.zeros_like(target)
    assert mask_dice_loss(zero, target) > 0.3
    assert abs(float(mask_bce_loss(zero, target)) - 0.6931) < 1e-3
