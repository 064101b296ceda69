"""The mmdet wing: every adapter that imports mmdet, mmcv or mmengine.

Laid out like mmdet itself (``models/{backbones,necks,layers,detectors,
segmentors,data_preprocessors}``, ``datasets``, ``evaluation``,
``engine/{hooks,runner,optimizers}``).  Each module registers its classes
into mmdet's (or mmengine's) registries on import, so importing this package
registers all of them.  ``import plugins`` does that for you as soon as mmdet
is imported (see :mod:`plugins`), which is what
``custom_imports = dict(imports=['plugins'])`` relies on.

The host-free core (everything in ``plugins`` outside this folder) never
imports it.
"""
from .engine.runner.checkpoint_compat import allow_mmengine_checkpoint_classes

# Resume under torch's weights_only default: an allow-list, never unpickling.
allow_mmengine_checkpoint_classes()

from . import datasets, engine, evaluation, models  # noqa: E402,F401

__all__ = ['datasets', 'engine', 'evaluation', 'models']
