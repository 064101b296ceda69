"""Let mmengine 0.10.7 resume under torch >= 2.6 without unsafe unpickling.

torch 2.6 made ``torch.load(weights_only=True)`` the default.  mmengine
0.10.7 calls ``torch.load`` without ``weights_only`` and its checkpoints
pickle a few non-tensor objects (the message hub's ``HistoryBuffer`` and the
numpy scalars/arrays inside it), so ``--resume`` fails with
``Weights only load failed``.  The safe fix is to allow-list exactly those
classes for torch's restricted unpickler; ``weights_only`` stays on, so a
checkpoint that names any other global is still refused.
"""
import numpy as np
import torch

from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_reconstruct():
    # numpy 2 moved the private module; the pickle names whichever the
    # writer used, so allow the one this numpy provides.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_dtype_classes():
    return [type(np.dtype(name)) for name in
            ('float64', 'float32', 'float16', 'int64', 'int32', 'int16',
             'int8', 'uint8', 'bool')]


#: Every class mmengine writes into a training checkpoint besides tensors
#: and builtin containers.
MMENGINE_CHECKPOINT_CLASSES = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    _numpy_reconstruct(),
    *_numpy_dtype_classes(),
]


def allow_mmengine_checkpoint_classes() -> None:
    """Allow-list mmengine's checkpoint classes for ``weights_only`` loads."""
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_CLASSES)
