"""CLIP-family backbones and a multi-scale deformable cross-attention
projector for mmdet detectors and LLaVA-Phi segmentation models.

The package is a host-free core (``plugins.ops``, ``plugins.utils``,
``plugins.layers``, ``plugins.models``, ``plugins.llava``,
``plugins.scoring``, ``plugins.prompt_learning``), which imports no
mmdet/mmcv/mmengine, and one wing for mmdet, :mod:`plugins.mmdet_custom`,
whose modules register backbones, necks, layers, detectors, segmentors,
datasets, metrics, hooks, the runner and optimizer constructors into the
mmdet/mmengine registries when it is imported.  An mmdet config names it::

    custom_imports = dict(imports=['plugins.mmdet_custom'],
                          allow_failed_imports=False)

Importing ``plugins`` itself has no side effect: it sets no environment
variable, patches no other library and registers nothing (so ``import
plugins.llava`` never imports mmdet, even where mmdet is installed or
installed but broken).  Everything here builds from local files by its own
arguments (local paths, ``local_files_only=True``); nothing reaches a model
hub.

A config that still says ``custom_imports=dict(imports=['plugins'])`` (this
package registered the wing on import until 2026-12) fails while it is read,
with an error naming the fix, instead of failing later with an empty
registry.
"""
import sys

__version__ = '0.1.0'

#: What a config's ``custom_imports`` names to register the mmdet wing.
WING = 'plugins.mmdet_custom'


class WingNotNamedError(RuntimeError):
    """A config's ``custom_imports`` names ``plugins`` instead of
    :data:`WING`.  Not an ``ImportError``, so mmengine's
    ``import_modules_from_strings`` does not replace the message."""


def _named_by_custom_imports() -> bool:
    """Whether this import is mmengine's ``custom_imports`` importing
    exactly ``'plugins'`` (not a parent import on the way to the wing)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == 'import_modules_from_strings' and \
                'mmengine' in code.co_filename:
            return frame.f_locals.get('imp') == __name__
        frame = frame.f_back
    return False


if _named_by_custom_imports():
    raise WingNotNamedError(
        f"custom_imports names '{__name__}', which registers nothing: the "
        f"mmdet wing is the package '{WING}'. Set custom_imports = "
        f"dict(imports=['{WING}'], allow_failed_imports=False) in the "
        'config (the shipped configs inherit it from '
        'configs/_base_/plugins_runtime.py).')
