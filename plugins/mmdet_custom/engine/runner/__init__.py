"""Runner pieces: atomic checkpoints, safe ``resume`` under torch's
``weights_only`` default, and the command-line glue of ``tools/``."""
from .atomic_checkpoint_runner import AtomicCheckpointRunner
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)

__all__ = [
    'AtomicCheckpointRunner', 'MMENGINE_CHECKPOINT_CLASSES',
    'allow_mmengine_checkpoint_classes'
]
