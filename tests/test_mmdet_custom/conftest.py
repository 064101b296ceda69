"""Tiny VPT/CoOp segmentor configs on the small toy dataset."""
import pytest
from mmengine.config import Config

DEMO_CONFIG = 'configs/_demo_/vpt4-tpt4_biomedclip-tiny_toy-semantic.py'
CLASSES = ('background', 'circle', 'square', 'triangle')


@pytest.fixture
def demo_cfg(repo_root, toy_data_root, tmp_path):
    """The demo config pointed at the session's small toy dataset."""
    cfg = Config.fromfile(str(repo_root / DEMO_CONFIG))
    root = str(toy_data_root) + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
        cfg[loader].batch_size = 4
    cfg.work_dir = str(tmp_path / 'work')
    return cfg


@pytest.fixture(scope='module')
def tiny_model():
    import torch
    from mmdet.registry import MODELS

    import plugins.mmdet_custom  # noqa: F401  (registers the wing)
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='VPTTPTSemanticSegmentor', class_names=CLASSES,
        segmentor=dict(model_name='BiomedCLIP-Tiny-test',
                       random_init='fan_in')))


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries, as a Runner with mmdet's scope does."""
    from mmengine.registry import DefaultScope

    import plugins.mmdet_custom  # noqa: F401  (registers the wing)
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield
