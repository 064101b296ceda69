"""mmengine glue: safe checkpoint loading for ``resume`` and training hooks."""
from .atomic_checkpoint_runner import AtomicCheckpointRunner
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)
from .rng_state_hook import RNGStateHook

__all__ = [
    'AtomicCheckpointRunner', 'MMENGINE_CHECKPOINT_CLASSES',
    'allow_mmengine_checkpoint_classes', 'RNGStateHook'
]
