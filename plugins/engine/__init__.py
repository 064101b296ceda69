"""mmengine glue: safe checkpoint loading for ``resume`` and training hooks."""
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)
from .rng_state_hook import RNGStateHook

__all__ = [
    'MMENGINE_CHECKPOINT_CLASSES', 'allow_mmengine_checkpoint_classes',
    'RNGStateHook'
]
