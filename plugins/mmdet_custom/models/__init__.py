"""mmdet models: backbones, necks, layers, detectors, segmentors and data
preprocessors, registered into mmdet's ``MODELS`` on import."""
from . import (backbones, data_preprocessors, detectors, layers,  # noqa: F401
               necks, segmentors)
