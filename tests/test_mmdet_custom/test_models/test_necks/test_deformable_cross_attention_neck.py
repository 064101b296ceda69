import copy

import pytest
import torch
from mmengine.config import Config

import plugins  # noqa: F401  (registers the neck)
from mmdet.registry import MODELS
from plugins.mmdet_custom.models.necks import DeformableCrossAttentionNeck


@pytest.fixture(autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def test_single_scale_input_becomes_a_pyramid():
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([96], out_channels=64,
                                        num_extra_levels=3, n_heads=4)
    outs = neck([torch.randn(2, 96, 15, 20)])
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, 15, 20), (2, 64, 8, 10), (2, 64, 4, 5), (2, 64, 2, 3)]


def test_every_level_sees_every_other_level():
    """Changing only the coarsest extra level's input changes level 0."""
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([32, 48], out_channels=32,
                                        num_extra_levels=0, n_heads=4)
    fine, coarse = torch.randn(1, 32, 8, 8), torch.randn(1, 48, 4, 4)
    out_a = neck([fine, coarse])[0]
    out_b = neck([fine, coarse + 1.0])[0]
    assert not torch.allclose(out_a, out_b)


def test_multi_level_input_and_errors():
    neck = DeformableCrossAttentionNeck([16, 32, 64], out_channels=32,
                                        num_extra_levels=1, n_heads=4)
    maps = [torch.randn(1, c, s, s) for c, s in ((16, 16), (32, 8), (64, 4))]
    assert [o.shape[-1] for o in neck(maps)] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match='expected 3 input maps'):
        neck(maps[:2])
    with pytest.raises(ValueError, match=r'n_heads \(5\) must divide'):
        DeformableCrossAttentionNeck([16], out_channels=32, n_heads=5)


def test_built_from_config():
    neck = MODELS.build(dict(type='DeformableCrossAttentionNeck',
                             in_channels=[16], out_channels=32, n_heads=4))
    assert len(neck([torch.randn(1, 16, 8, 8)])) == 4


@pytest.mark.slow
def test_dino_with_neck_trains_and_predicts(repo_root):
    """mmdet's DINO with a ResNet-18 and this neck: loss, step, predict."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(
        str(repo_root / 'configs/_demo_/dino-4scale_r18-tiny_toy.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.neck = dict(type='DeformableCrossAttentionNeck',
                          in_channels=[512], out_channels=256,
                          num_extra_levels=3)
    model_cfg.backbone.out_indices = (3,)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    images = torch.rand(2, 3, 256, 256) * 255
    samples = []
    for boxes, labels in (([[10., 12., 60., 70.]], [0]),
                          ([[30., 30., 90., 100.], [5., 5., 25., 25.]],
                           [1, 2])):
        sample = DetDataSample(metainfo=dict(
            img_shape=(256, 256), pad_shape=(256, 256),
            batch_input_shape=(256, 256), ori_shape=(256, 256),
            scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes),
                                           labels=torch.tensor(labels))
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=list(images.to(torch.uint8)),
                                        data_samples=samples), True)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    neck_before = copy.deepcopy(model.neck.state_dict())
    for _ in range(2):
        losses = model.loss(data['inputs'], data['data_samples'])
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(loss)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert any(not torch.equal(v, model.neck.state_dict()[k])
               for k, v in neck_before.items())
    model.eval()
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
    assert len(results) == 2
    assert results[0].pred_instances.bboxes.shape[1] == 4
