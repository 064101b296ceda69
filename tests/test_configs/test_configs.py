"""Every config builds; every detection demo config trains and predicts."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import plugins.mmdet_custom  # noqa: F401  (registers the wing)

ROOT = Path(__file__).resolve().parents[2]
ALL_CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py')
                     if '_base_' not in p.parts)
DEMO_DETECTORS = sorted(p for p in (ROOT / 'configs' / '_demo_').glob('*.py')
                        if Config.fromfile(str(p)).get('val_evaluator', {})
                        .get('type') == 'CocoMetric')


def test_demo_detectors_are_collected():
    # The parametrised demo test below must never run over an empty list.
    names = {p.name for p in DEMO_DETECTORS}
    assert {'dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py',
            'grounding_dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'} <= names
    assert len(ALL_CONFIGS) > len(DEMO_DETECTORS) >= 8


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory) -> str:
    from tools.make_tiny_bert import make_tiny_bert
    return str(make_tiny_bert(tmp_path_factory.mktemp('bert')))


@pytest.fixture(autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def _model_cfg(cfg: Config, tiny_bert: str) -> dict:
    model = copy.deepcopy(cfg.model)
    if 'language_model' in model:  # GroundingDINO: a local BERT folder
        model.language_model.name = tiny_bert
    return model


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_rel)
def test_config_builds(path, tiny_bert):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(path))
    assert cfg.get('custom_imports', {}).get('imports') == [
        'plugins.mmdet_custom'], (
        'every config must import the mmdet wing (drop-in for mmdet tools)')
    model = MODELS.build(_model_cfg(cfg, tiny_bert))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.parametrize('path', DEMO_DETECTORS, ids=_rel)
def test_demo_trains_two_iterations_and_predicts(path, tiny_bert,
                                                 toy_data_root, tmp_path):
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path)
    cfg.model = _model_cfg(cfg, tiny_bert)
    cfg.train_cfg.max_iters = 2
    cfg.train_cfg.val_interval = 3
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.name = f'vis_{path.stem}'
    for loader in ('train_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        dataset.data_root = f'{toy_data_root}/'
        dataset.ann_file = 'annotations/instances_train.json'
        dataset.data_prefix = dict(img='images/train/')
        dataset.indices = 2
    cfg.train_dataloader.batch_size = 2
    cfg.test_evaluator.ann_file = str(
        toy_data_root / 'annotations' / 'instances_train.json')
    cfg.pop('val_dataloader'), cfg.pop('val_cfg'), cfg.pop('val_evaluator')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert (tmp_path / 'iter_2.pth').is_file()
    metrics = runner.test()
    assert 'coco/bbox_mAP' in metrics
    torch.manual_seed(0)
