"""Semantic segmentation quality: IoU and Dice per class, and their means."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS


def confusion_areas(pred: torch.Tensor, gt: torch.Tensor, num_classes: int,
                    ignore_index: int = 255) -> torch.Tensor:
    """Per-class pixel counts of one prediction against its ground truth.

    Args:
        pred (Tensor): ``(H, W)`` predicted class indices.
        gt (Tensor): ``(H, W)`` true class indices; ``ignore_index`` pixels
            are skipped.
        num_classes (int): ``K``.
        ignore_index (int): label to skip. Defaults to 255.

    Returns:
        Tensor: ``(3, K)`` int64: intersection, predicted area, true area.
    """
    if pred.shape != gt.shape:
        raise ValueError(f'prediction {tuple(pred.shape)} and ground truth '
                         f'{tuple(gt.shape)} differ in shape')
    valid = gt != ignore_index
    pred, gt = pred[valid].long(), gt[valid].long()
    hit = pred[pred == gt]
    return torch.stack([
        torch.bincount(hit, minlength=num_classes)[:num_classes],
        torch.bincount(pred, minlength=num_classes)[:num_classes],
        torch.bincount(gt, minlength=num_classes)[:num_classes],
    ]).cpu()


def iou_dice_from_areas(areas: torch.Tensor) -> Dict[str, np.ndarray]:
    """IoU, Dice and accuracy per class from summed :func:`confusion_areas`.

    A class absent from both prediction and ground truth gets NaN (left out
    of the means).
    """
    inter, pred, true = (a.double().numpy() for a in areas)
    with np.errstate(divide='ignore', invalid='ignore'):
        union = pred + true - inter
        iou = np.where(union > 0, inter / union, np.nan)
        dice = np.where(pred + true > 0, 2 * inter / (pred + true), np.nan)
        acc = np.where(true > 0, inter / true, np.nan)
    return dict(IoU=iou, Dice=dice, Acc=acc)


@METRICS.register_module()
class IoUDiceMetric(BaseMetric):
    """mIoU, mean Dice and per-class IoU/Dice of semantic predictions.

    Reads ``pred_sem_seg.sem_seg`` and ``gt_sem_seg.sem_seg`` (``(1, H, W)``)
    of each data sample; keeps only a ``(3, K)`` count table per image.
    Values are fractions in [0, 1] (mmdet's convention), keys
    ``<prefix>/mIoU``, ``<prefix>/mDice``, ``<prefix>/aAcc`` and, with
    ``per_class=True``, ``<prefix>/IoU.<class>`` and ``<prefix>/Dice.<class>``.

    Args:
        ignore_index (int): label skipped in the ground truth. Defaults to
            255 (a sample's own ``ignore_index`` meta wins).
        per_class (bool): report every class, not just the means.
            Defaults to True.
        collect_device (str): ``'cpu'`` or ``'gpu'`` for distributed runs.
        prefix (str, optional): key prefix. Defaults to ``'semseg'``.
    """

    default_prefix: Optional[str] = 'semseg'

    def __init__(self,
                 ignore_index: int = 255,
                 per_class: bool = True,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ignore_index = ignore_index
        self.per_class = per_class

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        num_classes = len(self.dataset_meta['classes'])
        for sample in data_samples:
            pred = sample['pred_sem_seg']['sem_seg'].squeeze(0)
            gt = sample['gt_sem_seg']['sem_seg'].squeeze(0).to(pred.device)
            ignore = sample.get('ignore_index', self.ignore_index)
            self.results.append(
                confusion_areas(pred, gt, num_classes, ignore))

    def compute_metrics(self, results: List[torch.Tensor]) -> Dict[str, float]:
        classes = self.dataset_meta['classes']
        areas = torch.stack(results).sum(0)
        scores = iou_dice_from_areas(areas)
        metrics = OrderedDict(
            mIoU=float(np.nanmean(scores['IoU'])),
            mDice=float(np.nanmean(scores['Dice'])),
            aAcc=float(areas[0].sum() / max(int(areas[2].sum()), 1)))
        if self.per_class:
            for i, name in enumerate(classes):
                metrics[f'IoU.{name}'] = float(scores['IoU'][i])
                metrics[f'Dice.{name}'] = float(scores['Dice'][i])
        MMLogger.get_current_instance().info(
            '\n' + format_class_table(classes, scores))
        return metrics


def format_class_table(classes: Sequence[str],
                       scores: Dict[str, np.ndarray]) -> str:
    """A plain-text table of per-class scores (percent)."""
    width = max(len('class'), *(len(c) for c in classes))
    cols = list(scores)
    lines = ['  '.join([f'{"class":<{width}}'] + [f'{c:>7}' for c in cols])]
    for i, name in enumerate(classes):
        cells = [f'{100 * scores[c][i]:7.2f}' for c in cols]
        lines.append('  '.join([f'{name:<{width}}'] + cells))
    return '\n'.join(lines)
