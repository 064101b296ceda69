"""Single-scale CLIP-family backbones for mmdet (registered on import)."""
from .base import CLIPBackboneBase
from .biomed_clip import BiomedCLIPBackbone
from .clip_surgery import SurgeryCLIPBackbone
from .concept_clip import ConceptCLIPBackbone
from .open_clip import OpenCLIPBackbone

__all__ = [
    'CLIPBackboneBase', 'OpenCLIPBackbone', 'BiomedCLIPBackbone',
    'SurgeryCLIPBackbone', 'ConceptCLIPBackbone'
]
