"""Single-scale CLIP-family backbones for mmdet (registered on import)."""
import importlib
import importlib.util

from .base import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPBackboneBase,
                   clip_data_preprocessor)
from .biomed_clip import BiomedCLIPBackbone
from .open_clip import OpenCLIPBackbone

__all__ = [
    'CLIPBackboneBase', 'clip_data_preprocessor', 'OPENAI_CLIP_MEAN',
    'OPENAI_CLIP_STD', 'OpenCLIPBackbone', 'BiomedCLIPBackbone'
]

# Backbones built on the base by their own modules; imported when present so
# that `import plugins` registers them.
for _module, _names in (('surgery_clip', ('SurgeryCLIPBackbone', )),
                        ('concept_clip', ('ConceptCLIPBackbone', ))):
    if importlib.util.find_spec(f'{__name__}.{_module}') is not None:
        _mod = importlib.import_module(f'{__name__}.{_module}')
        for _name in _names:
            if hasattr(_mod, _name):
                globals()[_name] = getattr(_mod, _name)
                __all__.append(_name)
