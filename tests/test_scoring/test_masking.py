"""Pixel-exact checks of the mask strategies on hand-computed arrays.

Rounding is half up after float64 arithmetic, then clipped to [0, 255].
"""
import numpy as np
import pytest

from plugins.scoring import apply_strategy, crop_box

# 2x2 single-channel values repeated on 3 channels; mask: left column.
PIX = np.array([[10, 100], [250, 0]], np.uint8)
MASK = np.array([[True, False], [True, False]])


def rgb(a):
    return np.repeat(np.asarray(a, np.uint8)[..., None], 3, axis=2)


def test_gray():
    # inside: 10*1.05=10.5 -> 11, 250*1.05=262.5 -> 255; outside -> 128
    out = apply_strategy(rgb(PIX), MASK, 'gray')
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb([[11, 128], [255, 128]]))


def test_raw_is_the_crop():
    crop = rgb(PIX)
    out = apply_strategy(crop, MASK, 'raw')
    np.testing.assert_array_equal(out, crop)
    assert out is not crop


def test_soft_default_alpha():
    # outside: 0.6*100 + 0.4*128 = 111.2 -> 111; 0.6*0 + 51.2 -> 51
    out = apply_strategy(rgb(PIX), MASK, 'soft')
    np.testing.assert_array_equal(out, rgb([[11, 111], [255, 51]]))


def test_soft_alpha_extremes_and_half():
    crop = rgb(PIX)
    np.testing.assert_array_equal(
        apply_strategy(crop, MASK, 'soft', soft_alpha=1.0),
        apply_strategy(crop, MASK, 'gray'))
    # alpha 0.5: 0.5*100 + 64 = 114; 0.5*0 + 64 = 64
    np.testing.assert_array_equal(
        apply_strategy(crop, MASK, 'soft', soft_alpha=0.5),
        rgb([[11, 114], [255, 64]]))
    # alpha 0: outside unchanged
    np.testing.assert_array_equal(
        apply_strategy(crop, MASK, 'soft', soft_alpha=0.0),
        rgb([[11, 100], [255, 0]]))


def test_no_mask_means_all_inside():
    np.testing.assert_array_equal(apply_strategy(rgb(PIX), None, 'gray'),
                                  rgb([[11, 105], [255, 0]]))


def test_per_channel_values():
    crop = np.array([[[200, 20, 243]]], np.uint8)  # 210, 21, 255.15
    np.testing.assert_array_equal(
        apply_strategy(crop, np.ones((1, 1), bool), 'gray'),
        [[[210, 21, 255]]])


def test_errors():
    with pytest.raises(ValueError, match='unknown strategy'):
        apply_strategy(rgb(PIX), MASK, 'blur')
    with pytest.raises(ValueError, match='mask shape'):
        apply_strategy(rgb(PIX), np.ones((3, 3), bool), 'gray')
    with pytest.raises(ValueError, match='soft_alpha'):
        apply_strategy(rgb(PIX), MASK, 'soft', soft_alpha=1.5)
    with pytest.raises(ValueError, match='uint8'):
        apply_strategy(rgb(PIX).astype(np.float32), MASK, 'gray')


def test_crop_box_clips_and_rounds_outward():
    image = rgb(np.arange(20, dtype=np.uint8).reshape(4, 5))
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    crop, m = crop_box(image, [1.5, 0.2, 3.2, 9.0], mask)
    np.testing.assert_array_equal(crop[..., 0], image[0:4, 1:4, 0])
    assert m.shape == (4, 3) and m[1, 1] and m.sum() == 1
    crop, _ = crop_box(image, [2, 2, 2, 2])  # empty box keeps one pixel
    assert crop.shape == (1, 1, 3)
