"""Datasets and transforms, registered into mmdet's registries on import."""
from .semantic_mask_folder import (LoadSemanticMask, PackSemSegInputs,
                                   SemanticMaskFolderDataset)

__all__ = ['LoadSemanticMask', 'PackSemSegInputs', 'SemanticMaskFolderDataset']
