"""mmengine models for semantic segmentation, registered into mmdet's MODELS
(and their test-time visualisation hook into HOOKS) on import."""
# The IoU/Dice metric these models are evaluated with.
from plugins import evaluation  # noqa: F401
from .data_preprocessor import ImageListDataPreprocessor
from .semseg_visualization_hook import SemSegVisualizationHook
from .vpt_tpt_semantic_segmentor import VPTTPTSemanticSegmentor

__all__ = [
    'ImageListDataPreprocessor', 'SemSegVisualizationHook',
    'VPTTPTSemanticSegmentor'
]
