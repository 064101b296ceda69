"""The mmdet wing: every adapter that imports mmdet, mmcv or mmengine.

Laid out like mmdet itself (``models/{backbones,necks,layers,detectors,
segmentors,data_preprocessors}``, ``datasets``, ``evaluation``,
``engine/{hooks,runner,optimizers}``).  Each module registers its classes
into mmdet's (or mmengine's) registries on import, so importing this package
registers all of them; a config names it::

    custom_imports = dict(imports=['plugins.mmdet_custom'],
                          allow_failed_imports=False)

Importing it has no other effect than registering (and allow-listing
mmengine's checkpoint classes for ``weights_only`` loading, below).  A
failure in any of its modules propagates, every time it is imported, so a
config never runs with a partly empty registry.

The host-free core (everything in ``plugins`` outside this folder) never
imports it, and it imports nothing from ``plugins/__init__.py``.
"""
from .engine.runner.checkpoint_compat import allow_mmengine_checkpoint_classes

# Resume under torch's weights_only default: an allow-list, never unpickling.
allow_mmengine_checkpoint_classes()

from . import datasets, engine, evaluation, models  # noqa: E402,F401

__all__ = ['datasets', 'engine', 'evaluation', 'models']
