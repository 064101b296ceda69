"""Let mmengine 0.10.7 resume under torch >= 2.6 without unsafe unpickling.

torch 2.6 made ``torch.load(weights_only=True)`` the default.  mmengine
0.10.7 calls ``torch.load`` without ``weights_only`` and its checkpoints
pickle a few non-tensor objects (the message hub's ``HistoryBuffer``, the
numpy arrays and scalars inside it, and -- through
``HistoryBuffer.__getstate__`` -- its statistics methods as
``getattr(HistoryBuffer, 'mean')``), so ``--resume`` fails with
``Weights only load failed``.

The safe fix: allow-list exactly those classes for torch's restricted
unpickler, and instead of the builtin ``getattr`` give it a getattr that
only resolves HistoryBuffer's own statistics methods.  ``weights_only``
stays on, so a checkpoint naming any other global is still refused.
"""
import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_multiarray():
    # numpy 2 renamed the private module; allow what this numpy writes.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def _numpy_dtype_classes():
    return [type(np.dtype(name)) for name in
            ('float64', 'float32', 'float16', 'int64', 'int32', 'int16',
             'int8', 'uint8', 'bool')]


def history_buffer_getattr(obj, name: str):
    """``getattr`` restricted to HistoryBuffer's statistics methods.

    mmengine pickles ``HistoryBuffer._statistics_methods`` entries as
    ``getattr(HistoryBuffer, 'min')``; anything else a checkpoint tries to
    reach through ``getattr`` is refused.
    """
    allowed = {'min', 'max', 'mean', 'current'}
    allowed.update(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only '
        f'HistoryBuffer statistics methods {sorted(allowed)} are allowed')


_multiarray = _numpy_multiarray()

#: Every class mmengine writes into a training checkpoint besides tensors
#: and builtin containers.
MMENGINE_CHECKPOINT_CLASSES = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    _multiarray._reconstruct,
    _multiarray.scalar,
    *_numpy_dtype_classes(),
]

#: The pickle names ``getattr`` by its builtins path; map it to ours.
_RESTRICTED_GETATTR = [(history_buffer_getattr, 'builtins.getattr'),
                       (history_buffer_getattr, '__builtin__.getattr')]


def allow_mmengine_checkpoint_classes() -> None:
    """Allow-list mmengine's checkpoint classes for ``weights_only`` loads."""
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_CLASSES +
                                         _RESTRICTED_GETATTR)
