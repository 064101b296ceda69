"""Runner pieces: atomic checkpoints (and ``last_checkpoint``), clean-up
of killed saves, ``--resume auto`` past a damaged ``last_checkpoint``, safe
``resume`` under torch's ``weights_only`` default, and the command-line
glue of ``tools/``."""
from .atomic_checkpoint_runner import (AtomicCheckpointHook,
                                       AtomicCheckpointRunner,
                                       find_resume_checkpoint,
                                       remove_stale_temporaries)
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)

__all__ = [
    'AtomicCheckpointHook', 'AtomicCheckpointRunner',
    'find_resume_checkpoint', 'remove_stale_temporaries',
    'MMENGINE_CHECKPOINT_CLASSES', 'allow_mmengine_checkpoint_classes'
]
