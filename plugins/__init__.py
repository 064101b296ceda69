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

Importing ``plugins`` also puts the Hugging Face libraries offline (no model
hub), unless ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is already set (e.g.
``HF_HUB_OFFLINE=0``) or ``PLUGINS_ALLOW_HUB=1``: see :func:`set_hub_offline`.
"""
import importlib.util
import os
import sys

__version__ = '0.1.0'

#: Environment variables that put the Hugging Face libraries offline.
HUB_OFFLINE_VARS = ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE',
                    'HF_DATASETS_OFFLINE')
#: Set to 1 to let importing ``plugins`` leave the hub reachable.
ALLOW_HUB_VAR = 'PLUGINS_ALLOW_HUB'


def set_hub_offline() -> bool:
    """Put the Hugging Face libraries (huggingface_hub, transformers,
    open_clip/timm downloads) offline, unless the user decided: any of
    :data:`HUB_OFFLINE_VARS` already set (``HF_HUB_OFFLINE=0`` opts in) or
    ``PLUGINS_ALLOW_HUB=1``. Everything here builds from local files, and a
    missing local folder must fail at once instead of retrying the hub.
    Returns whether it set them."""
    if os.environ.get(ALLOW_HUB_VAR) == '1' or any(
            name in os.environ for name in HUB_OFFLINE_VARS):
        return False
    for name in HUB_OFFLINE_VARS:
        os.environ[name] = '1'
    # Libraries imported before us read the variables already.
    constants = sys.modules.get('huggingface_hub.constants')
    if constants is not None and hasattr(constants, 'HF_HUB_OFFLINE'):
        constants.HF_HUB_OFFLINE = True
    hub = sys.modules.get('transformers.utils.hub')
    if hub is not None and hasattr(hub, '_is_offline_mode'):
        hub._is_offline_mode = True
    return True


def hub_allowed() -> bool:
    """Whether the Hugging Face hub may be reached (``HF_HUB_OFFLINE`` is
    unset or false)."""
    return os.environ.get('HF_HUB_OFFLINE', '').strip().lower() not in (
        '1', 'true', 'yes', 'on')


set_hub_offline()


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
