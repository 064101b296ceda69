"""mmengine glue: safe checkpoint loading for ``resume``, training hooks and
the layer-wise LR decay optimizer constructor."""
from .atomic_checkpoint_runner import AtomicCheckpointRunner
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)
from .layer_decay_optim_constructor import LayerDecayOptimWrapperConstructor
from .rng_state_hook import RNGStateHook

__all__ = [
    'AtomicCheckpointRunner', 'MMENGINE_CHECKPOINT_CLASSES',
    'allow_mmengine_checkpoint_classes', 'LayerDecayOptimWrapperConstructor',
    'RNGStateHook'
]
