"""Tiny prompt-learning models (random weights, built offline)."""
import pytest
import torch

from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME)
from plugins.prompt_learning import VPTTPTSegmentor

TINY_BIOMEDCLIP = BIOMEDCLIP_TINY_MODEL_NAME  # timm test_vit + 2-layer BERT
TINY_OPEN_CLIP = OPEN_CLIP_TINY_MODEL_NAME  # open_clip ViT + text transformer


@pytest.fixture(scope='module')
def tiny_biomedclip():
    torch.manual_seed(0)
    return VPTTPTSegmentor(model_name=TINY_BIOMEDCLIP)


@pytest.fixture(scope='module')
def tiny_open_clip():
    torch.manual_seed(0)
    return VPTTPTSegmentor(model_name=TINY_OPEN_CLIP)


@pytest.fixture(params=[TINY_BIOMEDCLIP, TINY_OPEN_CLIP])
def tiny_segmentor(request, tiny_biomedclip, tiny_open_clip):
    """Both text-tower kinds: BERT (CLS/SEP) and open_clip (SOT/EOT)."""
    return {TINY_BIOMEDCLIP: tiny_biomedclip,
            TINY_OPEN_CLIP: tiny_open_clip}[request.param]
