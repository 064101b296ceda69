"""Metrics, registered into mmdet's METRICS registry on import."""
from .iou_dice_metric import (IoUDiceMetric, confusion_areas,
                              iou_dice_from_areas)

__all__ = ['IoUDiceMetric', 'confusion_areas', 'iou_dice_from_areas']
