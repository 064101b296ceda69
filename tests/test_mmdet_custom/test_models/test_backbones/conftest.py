"""Tiny CLIP models saved in every supported weight format (offline)."""
import pytest
import torch

from plugins.models import create_model
from plugins.models.testing import save_clip_checkpoint

TINY_OPEN_CLIP = 'ViT-Tiny-16-test'  # open_clip ViT, width 64, 4 blocks
TINY_BIOMEDCLIP = 'BiomedCLIP-Tiny-test'  # timm test_vit + 2-layer BERT


@pytest.fixture(scope='session')
def tiny_clip_files(tmp_path_factory):
    """A random ``ViT-Tiny-16-test`` CLIP and its files per format.

    Returns:
        tuple: ``(model, {'safetensors': path, 'bin': path, 'openai': path})``
    """
    torch.manual_seed(0)
    model = create_model(TINY_OPEN_CLIP).eval()
    root = tmp_path_factory.mktemp('tiny_clip')
    files = {
        fmt: save_clip_checkpoint(model, root, fmt)
        for fmt in ('safetensors', 'bin', 'openai')
    }
    return model, files


@pytest.fixture(scope='session')
def tiny_biomedclip_files(tmp_path_factory):
    """A random ``BiomedCLIP-Tiny-test`` and its files (.bin, .safetensors)."""
    torch.manual_seed(0)
    model = create_model(TINY_BIOMEDCLIP).eval()
    root = tmp_path_factory.mktemp('tiny_biomedclip')
    files = {
        fmt: save_clip_checkpoint(model, root, fmt)
        for fmt in ('safetensors', 'bin')
    }
    return model, files
