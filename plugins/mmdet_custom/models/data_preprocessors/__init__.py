"""Data preprocessors (registered into mmdet's ``MODELS`` on import)."""
from .image_list_data_preprocessor import ImageListDataPreprocessor

__all__ = ['ImageListDataPreprocessor']
