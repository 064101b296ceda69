"""Resume DeepSpeed checkpoints without unsafe unpickling.

DeepSpeed 0.19's ``TorchCheckpointEngine.load`` calls
``torch.load(weights_only=False)``, which runs any code a pickle names. Our
training checkpoints hold tensors, plain containers and two DeepSpeed value
classes (the ZeRO optimizer's ``LossScaler``, its ``ZeroStageEnum`` and
the ``fragment_address`` records of its flat partitions), so :func:`use_safe_loading` routes every
load through :func:`plugins.utils.safe_load_object` (``weights_only=True``)
with exactly those classes allow-listed. A checkpoint naming any other
global is refused.
"""
import logging
from typing import List

logger = logging.getLogger(__name__)


def deepspeed_checkpoint_classes() -> List[type]:
    """DeepSpeed classes pickled into ZeRO checkpoints (values only: a
    loss-scale record, the stage enum and a ``(start, numel)`` record)."""
    from deepspeed.runtime.fp16.loss_scaler import (DynamicLossScaler,
                                                    LossScaler)
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


def use_safe_loading(engine) -> None:
    """Make ``engine.load_checkpoint`` read files with ``weights_only=True``.

    Replaces ``load`` on the engine's checkpoint engine instance (DeepSpeed
    loads model and optimizer states through it).
    """
    from plugins.utils import safe_load_object

    classes = deepspeed_checkpoint_classes()

    def load(path: str, map_location=None):
        return safe_load_object(path, map_location or 'cpu',
                                extra_globals=classes)

    engine.checkpoint_engine.load = load
