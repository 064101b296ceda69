"""Shared fixtures: tiny data and offline settings for every test."""
import os
from pathlib import Path

import pytest

# pytest.ini (pythonpath = .) puts the repository root on sys.path, so tests
# import tools.* and tests.helpers
ROOT = Path(__file__).resolve().parents[1]

# No test may reach a model hub.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope='session')
def toy_data_root(tmp_path_factory) -> Path:
    """A small toy dataset (8 train / 4 val images of 128x128)."""
    from tools.make_toy_dataset import make_toy_dataset
    return make_toy_dataset(tmp_path_factory.mktemp('toy'), num_train=8,
                            num_val=4, size=128, seed=0)


@pytest.fixture(scope='session')
def kernel_loaded():
    """Load (or JIT-compile) the CPU kernel once; fail loudly if impossible,
    since every test that asks for this is about the compiled kernel."""
    from plugins.ops.ms_deform_attn import loader
    if not loader.load('cpu'):
        pytest.fail(f'CPU kernel unavailable: {loader.status("cpu")}')
    return True


@pytest.fixture(scope='module')
def tiny_clip():
    """``(model, preprocess, tokenizer)`` of ``ViT-Tiny-16-test``."""
    import torch

    from plugins.models import OPEN_CLIP_TINY_MODEL_NAME, build_open_clip
    torch.manual_seed(0)
    return build_open_clip(OPEN_CLIP_TINY_MODEL_NAME)


@pytest.fixture
def image():
    """A deterministic ``(48, 64, 3)`` uint8 image."""
    import numpy as np
    return np.random.RandomState(0).randint(0,
                                            256, (48, 64, 3),
                                            dtype=np.uint8)


@pytest.fixture(scope='session')
def tiny_clip_files(tmp_path_factory):
    """A random ``ViT-Tiny-16-test`` CLIP and its files per format.

    Returns:
        tuple: ``(model, {'safetensors': path, 'bin': path, 'openai': path})``
    """
    import torch

    from plugins.models import OPEN_CLIP_TINY_MODEL_NAME, create_model
    from plugins.models.testing import save_clip_checkpoint
    torch.manual_seed(0)
    model = create_model(OPEN_CLIP_TINY_MODEL_NAME).eval()
    root = tmp_path_factory.mktemp('tiny_clip')
    files = {
        fmt: save_clip_checkpoint(model, root, fmt)
        for fmt in ('safetensors', 'bin', 'openai')
    }
    return model, files


@pytest.fixture(scope='session')
def tiny_biomedclip_files(tmp_path_factory):
    """A random ``BiomedCLIP-Tiny-test`` and its files (.bin, .safetensors)."""
    import torch

    from plugins.models import BIOMEDCLIP_TINY_MODEL_NAME, create_model
    from plugins.models.testing import save_clip_checkpoint
    torch.manual_seed(0)
    model = create_model(BIOMEDCLIP_TINY_MODEL_NAME).eval()
    root = tmp_path_factory.mktemp('tiny_biomedclip')
    files = {
        fmt: save_clip_checkpoint(model, root, fmt)
        for fmt in ('safetensors', 'bin')
    }
    return model, files


@pytest.fixture(scope='session')
def config_copy(tmp_path_factory):
    """``config_copy(shipped, name, drop=(), updates=None)``: a shipped model
    config saved as ``<name>.json`` (without the top-level keys in ``drop``;
    ``updates`` merged into it, a dict value into the section of that name)
    and registered with open_clip; returns the file's path.  For testing
    that builders follow a config's content, not its name."""
    import json

    import open_clip

    from plugins.models import MODEL_CONFIG_DIR
    folder = tmp_path_factory.mktemp('model_configs')

    def copy(shipped: str, name: str, drop=(), updates=None) -> Path:
        cfg = json.loads((MODEL_CONFIG_DIR / f'{shipped}.json').read_text())
        for key in drop:
            del cfg[key]
        for key, value in (updates or {}).items():
            if isinstance(value, dict):
                cfg.setdefault(key, {}).update(value)
            else:
                cfg[key] = value
        path = folder / f'{name}.json'
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
        return path

    return copy


@pytest.fixture(scope='session')
def bert_without_vocab(tmp_path_factory):
    """``text_cfg`` updates for a tiny BERT text tower whose folder holds a
    ``config.json`` but no ``vocab.txt`` (as the real BiomedCLIP's)."""
    import shutil

    from plugins.models import HF_CONFIG_DIR
    folder = tmp_path_factory.mktemp('bert_without_vocab')
    shutil.copy(HF_CONFIG_DIR / 'BiomedBERT-tiny-test' / 'config.json',
                folder / 'config.json')
    return dict(text_cfg=dict(hf_model_name=str(folder),
                              hf_tokenizer_name=str(folder)))
