import math

import pytest
import torch
from mmengine.structures import PixelData

from mmdet.structures import DetDataSample
from plugins.mmdet_custom.evaluation import IoUDiceMetric, confusion_areas


def sample(pred, gt):
    s = DetDataSample()
    s.pred_sem_seg = PixelData(sem_seg=torch.tensor(pred)[None])
    s.gt_sem_seg = PixelData(sem_seg=torch.tensor(gt)[None])
    return s.to_dict()


def evaluate(pairs, classes=('bg', 'a', 'b')):
    metric = IoUDiceMetric()
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, [sample(p, g) for p, g in pairs])
    return metric.evaluate(len(pairs))


def test_perfect_prediction():
    gt = [[0, 1], [2, 2]]
    m = evaluate([(gt, gt)])
    assert m['semseg/mIoU'] == 1.0 and m['semseg/mDice'] == 1.0
    assert m['semseg/aAcc'] == 1.0


def test_known_values_and_ignore():
    # class 1: pred 2 px, gt 1 px, overlap 1 -> IoU 1/2, Dice 2/3
    pred = [[0, 1], [1, 0]]
    gt = [[0, 1], [0, 255]]  # the 255 pixel is ignored
    m = evaluate([(pred, gt)])
    assert m['semseg/IoU.a'] == pytest.approx(0.5)
    assert m['semseg/Dice.a'] == pytest.approx(2 / 3)
    assert m['semseg/IoU.bg'] == pytest.approx(0.5)  # 1 hit, 2 gt, 1 pred
    assert math.isnan(m['semseg/IoU.b'])  # absent everywhere: left out
    assert m['semseg/mIoU'] == pytest.approx(0.5)
    assert m['semseg/aAcc'] == pytest.approx(2 / 3)


def test_areas_and_shape_check():
    areas = confusion_areas(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]),
                            num_classes=2)
    assert areas.tolist() == [[1, 1], [1, 2], [2, 1]]
    with pytest.raises(ValueError, match='differ in shape'):
        confusion_areas(torch.zeros(2, 2), torch.zeros(2, 3), 2)
