"""Single-scale CLIP-family backbones for mmdet (registered on import)."""
from .base import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPBackboneBase,
                   clip_data_preprocessor)
from .biomed_clip import BiomedCLIPBackbone
from .clip_surgery import SurgeryCLIPBackbone
from .concept_clip import ConceptCLIPBackbone
from .open_clip import OpenCLIPBackbone

__all__ = [
    'CLIPBackboneBase', 'clip_data_preprocessor', 'OPENAI_CLIP_MEAN',
    'OPENAI_CLIP_STD', 'OpenCLIPBackbone', 'BiomedCLIPBackbone',
    'SurgeryCLIPBackbone', 'ConceptCLIPBackbone'
]
