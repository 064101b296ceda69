"""Using a trained model outside the runner: build it from its config and
checkpoint (:func:`init_detector`, with the strict checkpoint load that
``tools/test.py``, ``tools/infer.py`` and ``tools/export.py`` share:
:func:`load_model_checkpoint`), predict on images and arrays as
``tools/test.py`` does (:class:`Predictor`), and on files, folders, globs
and videos with JSON and pictures out (:func:`run_inference`)."""
from .infer_inputs import (InferenceSummary, InputFile, collect_inputs,
                           draw_detections, run_inference)
from .inference import (CheckpointMismatchError, init_detector,
                        load_model_checkpoint)
from .predictor import Predictor, parse_text_prompt, test_pipeline_cfg

__all__ = [
    'CheckpointMismatchError', 'init_detector', 'load_model_checkpoint',
    'Predictor', 'parse_text_prompt', 'test_pipeline_cfg',
    'InferenceSummary', 'InputFile', 'collect_inputs', 'draw_detections',
    'run_inference'
]
