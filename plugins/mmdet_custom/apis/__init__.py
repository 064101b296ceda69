"""Using a trained model outside the runner: build it from its config and
checkpoint (:func:`init_detector`), and the strict checkpoint load that
``tools/test.py``, ``tools/infer.py`` and ``tools/export.py`` share
(:func:`load_model_checkpoint`)."""
from .inference import (CheckpointMismatchError, init_detector,
                        load_model_checkpoint)

__all__ = ['CheckpointMismatchError', 'init_detector', 'load_model_checkpoint']
