"""Tiny scoring fixtures: a tiny open_clip model and a deterministic image."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope='module')
def tiny_clip():
    """``(model, preprocess, tokenizer)`` of ``ViT-Tiny-16-test``."""
    from plugins.models import OPEN_CLIP_TINY_MODEL_NAME, build_open_clip
    torch.manual_seed(0)
    return build_open_clip(OPEN_CLIP_TINY_MODEL_NAME)


@pytest.fixture
def image():
    return np.random.RandomState(0).randint(0,
                                            256, (48, 64, 3),
                                            dtype=np.uint8)
