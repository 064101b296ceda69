"""Shared fixtures: tiny data and offline settings for every test."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests import `tools.*` helpers (e.g. the toy-data generator).
sys.path.insert(0, str(ROOT))

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
