"""Bad or unusual inputs at the detector level: each either works or fails
with a message that names the problem.  (Per-component cases live with their
components: weights files in tests/test_utils, backbone inputs in
tests/test_backbones, projector arguments in tests/test_layers.)"""
import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

import plugins.mmdet_custom  # noqa: F401  (registers the wing)

CONFIG = 'configs/_demo_/dino-4scale_openclip-tiny_deformneck-s16-128_toy.py'


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='module')
def cfg(repo_root):
    return Config.fromfile(str(repo_root / CONFIG))


@pytest.fixture(scope='module')
def detector(cfg):
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))  # build mutates it
    model.init_weights()
    return model


def _sample(h, w, boxes=(), labels=()):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(
        img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long))
    return sample


def _batch(detector, images, samples, training):
    inputs = [torch.as_tensor(np.ascontiguousarray(im.transpose(2, 0, 1)))
              for im in images]
    return detector.data_preprocessor(dict(inputs=inputs,
                                           data_samples=samples), training)


def test_odd_image_sizes_predict(detector):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
              for h, w in ((131, 97), (120, 203))]
    data = _batch(detector, images, [_sample(131, 97), _sample(120, 203)],
                  False)
    detector.eval()
    with torch.no_grad():
        results = detector.predict(data['inputs'], data['data_samples'])
    assert len(results) == 2
    assert results[1].pred_instances.bboxes.shape[-1] == 4


def test_empty_ground_truth_in_a_batch_trains(detector):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
              for _ in range(2)]
    samples = [_sample(128, 128, [[10, 10, 60, 70]], [1]),
               _sample(128, 128)]  # no objects at all
    detector.train()
    data = _batch(detector, images, samples, True)
    losses = detector.loss(data['inputs'], data['data_samples'])
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize('mode', ['L', 'RGBA', 'LA'])
def test_grayscale_and_rgba_files_load_as_three_channels(cfg, tmp_path, mode):
    """mmdet's LoadImageFromFile (the toy pipelines' first step) turns
    1-, 2- and 4-channel files into 3-channel images."""
    from mmcv.transforms import Compose
    path = tmp_path / f'img_{mode}.png'
    channels = len(mode)
    array = np.random.default_rng(0).integers(
        0, 255, (40, 50, channels), dtype=np.uint8).squeeze()
    Image.fromarray(array, mode).save(path)
    pipeline = Compose([cfg.test_pipeline[0], cfg.test_pipeline[1]])
    result = pipeline(dict(img_path=str(path), img_id=0))
    assert result['img'].ndim == 3 and result['img'].shape[2] == 3


def test_unknown_backbone_names_itself(cfg):
    from mmdet.registry import MODELS
    model = copy.deepcopy(cfg.model)
    model.backbone = dict(type='SurgeryClipBackbone')  # wrong case
    with pytest.raises(KeyError, match='SurgeryClipBackbone is not in the '
                       'mmdet::model registry'):
        MODELS.build(model)


def test_nan_images_are_reported_at_the_backbone(detector):
    images = torch.rand(1, 3, 64, 64)
    images[0, 0, 3, 3] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        detector.extract_feat(images)
