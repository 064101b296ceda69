"""Import every module that registers something into mmdet/mmengine.

Kept apart from ``plugins/__init__.py`` so that the host-free core never
imports mmdet; each adapter module decorates its class with
``@MODELS.register_module()`` (or the matching registry) on import.
"""
import importlib

from .engine.checkpoint_compat import allow_mmengine_checkpoint_classes

# Modules that register into mmdet/mmengine registries on import.  A module
# listed here must exist; a missing one is a packaging bug and should fail.
ADAPTER_MODULES = [
    'plugins.engine',
    'plugins.datasets',
    'plugins.evaluation',
    'plugins.backbones',
    'plugins.necks',
    'plugins.attention',
    'plugins.segmentors',
    'plugins.scoring_mmdet',
]

allow_mmengine_checkpoint_classes()

for _name in ADAPTER_MODULES:
    importlib.import_module(_name)
