"""mmengine glue: safe checkpoint loading for ``resume`` and training hooks."""
from .checkpoint_compat import (MMENGINE_CHECKPOINT_CLASSES,
                                allow_mmengine_checkpoint_classes)

__all__ = ['MMENGINE_CHECKPOINT_CLASSES', 'allow_mmengine_checkpoint_classes']
