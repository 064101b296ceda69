"""CLIP-family backbones and a multi-scale deformable cross-attention
projector for mmdet detectors and LLaVA-Phi segmentation models.

The package is a host-free core (``plugins.ops``, ``plugins.utils``,
``plugins.layers``, ``plugins.models``, ``plugins.llava``,
``plugins.scoring``, ``plugins.prompt_learning``), which imports no
mmdet/mmcv/mmengine, and one wing for mmdet, :mod:`plugins.mmdet_custom`,
whose modules register backbones, necks, layers, detectors, segmentors,
datasets, metrics, hooks and optimizer constructors into mmdet's registries.

``import plugins`` registers the wing as soon as mmdet is imported (at once
if it already is), so an mmdet config needs only::

    custom_imports = dict(imports=['plugins'], allow_failed_imports=False)

while ``import plugins.llava`` in a process that never imports mmdet never
imports it either, even where mmdet is installed (or installed but broken).

Importing ``plugins`` also puts the Hugging Face libraries offline (no model
hub), unless ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is already set (e.g.
``HF_HUB_OFFLINE=0``) or ``PLUGINS_ALLOW_HUB=1``: see :func:`set_hub_offline`.
"""
import importlib.abc
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


def register_all_modules() -> None:
    """Register every mmdet/mmengine adapter of this package.

    Safe to call more than once (Python caches the imports, so each class is
    registered exactly once).
    """
    import plugins.mmdet_custom  # noqa: F401


class _RegisterWingWithMMDet(importlib.abc.MetaPathFinder):
    """Import :mod:`plugins.mmdet_custom` right after ``mmdet`` is imported.

    A one-shot finder: it answers only for ``mmdet``, hands out the spec the
    other finders give, and wraps its loader so the wing registers once
    mmdet's ``__init__`` has run.  It removes itself first, so it never sees
    its own look-up.
    """

    def find_spec(self, name, path=None, target=None):
        if name != 'mmdet':
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            register_all_modules()

        spec.loader.exec_module = exec_module
        return spec


if sys.modules.get('mmdet') is not None:
    register_all_modules()
elif not any(isinstance(f, _RegisterWingWithMMDet) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWingWithMMDet())
