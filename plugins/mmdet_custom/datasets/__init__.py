"""Datasets and transforms, registered into mmdet's registries on import."""
from .checked_coco import CheckedCocoDataset, read_coco_json
from .semantic_mask_folder import (LoadSemanticMask, PackSemSegInputs,
                                   SemanticMaskFolderDataset)

__all__ = [
    'CheckedCocoDataset', 'LoadSemanticMask', 'PackSemSegInputs',
    'SemanticMaskFolderDataset', 'read_coco_json'
]
