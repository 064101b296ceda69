"""mmdet adapter of :mod:`plugins.scoring`: re-score any detector's output."""
from .region_rescoring_detector import RegionRescoringDetector

__all__ = ['RegionRescoringDetector']
