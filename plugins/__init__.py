"""CLIP-family backbones and a multi-scale deformable cross-attention
projector for mmdet detectors and LLaVA-Phi segmentation models.

Importing ``plugins`` registers every mmdet/mmengine adapter (backbones,
necks, attention, models, hooks, datasets) into mmdet's registries when mmdet
is importable, so a config needs only::

    custom_imports = dict(imports=['plugins'], allow_failed_imports=False)

The host-free core (``plugins.ops``, ``plugins.utils``, ``plugins.layers``,
``plugins.models``, ``plugins.llava``, ``plugins.scoring``,
``plugins.prompt_learning``) imports no mmdet/mmcv/mmengine and works on a
machine with only torch, open_clip, timm and transformers.
"""
import importlib.util

__version__ = '0.1.0'


def _mmdet_available() -> bool:
    return importlib.util.find_spec('mmdet') is not None


def register_all_modules() -> None:
    """Register every mmdet/mmengine adapter of this package.

    Safe to call more than once (Python caches the imports, so each class is
    registered exactly once).
    """
    from . import mmdet_registry  # noqa: F401


if _mmdet_available():
    register_all_modules()
