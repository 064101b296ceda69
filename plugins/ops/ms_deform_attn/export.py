"""Our op in exported programs: its ONNX form and AOTInductor packages.

``torch.export`` keeps ``torch.ops.plugins.ms_deform_attn`` as one node (the
fake kernel gives its shapes).  From there:

* **ONNX**: :func:`export_decompositions` rewrites that node into
  :func:`~plugins.ops.ms_deform_attn.gather.ms_deform_attn_gather` (standard
  ATen ops, so standard ONNX operators, no ``GridSample``) with
  ``ExportedProgram.run_decompositions``;
* **AOTInductor**: the node stays our op, and the compiled package calls our
  kernel through the dispatcher.  The package resolves the op by name when
  it is loaded: ``import plugins.ops`` registers the schema, and the first
  call loads the kernel library (``registration.py``), so
  ``torch._inductor.aoti_load_package`` works as is;
  :func:`aoti_load_package` also loads the library before the package (the
  first call then pays no load, and a missing kernel fails at load time).
"""
from typing import Callable, Dict

import torch

from . import loader
from .gather import ms_deform_attn_gather


def _require(kind: str = 'cpu') -> None:
    if not loader.load(kind):
        raise RuntimeError(f'plugins::ms_deform_attn ({kind}) is not '
                           f'available: {loader.status(kind)}')


def export_decompositions() -> Dict[object, Callable]:
    """``{torch.ops.plugins.ms_deform_attn.default: ms_deform_attn_gather}``.

    Merge it into a decomposition table for
    ``ExportedProgram.run_decompositions``: every call of our op becomes the
    gather form, which ``torch.onnx`` turns into standard ONNX operators.
    Loads the CPU op library first (the op exists only once it is loaded).

    Raises:
        RuntimeError: the compiled op library cannot be loaded.
    """
    _require('cpu')
    return {torch.ops.plugins.ms_deform_attn.default: ms_deform_attn_gather}


def aoti_load_package(path: str, device_index: int = -1):
    """``torch._inductor.aoti_load_package`` for packages that call our op.

    ``import plugins.ops`` is all that ``torch._inductor.aoti_load_package``
    needs (the op's schema; its kernel library loads on the first call).
    This loads the CPU library (and the CUDA one when a GPU is present)
    first, so that a missing or unbuildable kernel fails here, naming why,
    rather than at the first call, and then the package.

    Args:
        path (str): the ``.pt2`` package.
        device_index (int): CUDA device for CUDA packages (-1: current).

    Returns:
        callable: the compiled model, ``runner(*inputs) -> list[Tensor]``.
    """
    _require('cpu')
    if torch.cuda.is_available():
        loader.load('cuda')
    return torch._inductor.aoti_load_package(path, device_index=device_index)
