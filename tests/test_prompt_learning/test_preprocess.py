import pytest
import torch

from plugins.prompt_learning import (clip_preprocess_cfg, detect_value_range,
                                     preprocess_tensor_images)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_detect_value_range():
    assert detect_value_range(torch.rand(3, 4, 4)) == '0-1'
    assert detect_value_range(torch.rand(3, 4, 4) * 2 - 1) == '-1-1'
    assert detect_value_range(torch.rand(3, 4, 4) * 255) == '0-255'
    assert detect_value_range(torch.zeros(3, 4, 4, dtype=torch.uint8)) == \
        '0-255'


def test_ranges_channels_and_sizes_agree():
    x = torch.rand(2, 3, 64, 48)
    ref = preprocess_tensor_images(x, size=32, mean=MEAN, std=STD)
    assert ref.shape == (2, 3, 32, 32)
    for variant in (x * 2 - 1, x * 255, list(x * 255)):
        torch.testing.assert_close(
            preprocess_tensor_images(variant, size=32, mean=MEAN, std=STD),
            ref, atol=1e-5, rtol=1e-5)
    grey = x[:, :1]
    for one_channel in (grey, grey[:, 0]):  # (B, 1, H, W) and (B, H, W)
        torch.testing.assert_close(
            preprocess_tensor_images(one_channel, size=32, mean=MEAN, std=STD),
            preprocess_tensor_images(grey.expand(-1, 3, -1, -1), size=32,
                                     mean=MEAN, std=STD))


def test_normalisation_and_mixed_sizes():
    x = torch.full((3, 32, 32), 0.5)
    out = preprocess_tensor_images([x, torch.full((3, 16, 20), 0.5)],
                                   size=32, mean=MEAN, std=STD)
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[:, :, 5, 5], expected.expand(2, 3))


def test_forced_range_and_errors():
    dark = torch.full((1, 3, 8, 8), 0.5)  # 0.5 of 255: looks like [0, 1]
    forced = preprocess_tensor_images(dark, size=8, value_range='0-255')
    torch.testing.assert_close(forced, dark / 255)
    with pytest.raises(ValueError, match='2 channels'):
        preprocess_tensor_images(torch.rand(1, 2, 8, 8), size=8)
    with pytest.raises(ValueError, match='value_range'):
        preprocess_tensor_images(dark, size=8, value_range='0-100')


def test_statistics_come_from_the_model(tiny_biomedclip):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    cfg = clip_preprocess_cfg(tiny_biomedclip.clip_model)
    assert cfg['mean'] == tuple(OPENAI_DATASET_MEAN)
    assert cfg['std'] == tuple(OPENAI_DATASET_STD)
    assert cfg['size'] == (160, 160)
    assert tiny_biomedclip.preprocess(torch.rand(1, 3, 50, 70)).shape == \
        (1, 3, 160, 160)
