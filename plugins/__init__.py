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
"""
import importlib.abc
import importlib.util
import sys

__version__ = '0.1.0'


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
