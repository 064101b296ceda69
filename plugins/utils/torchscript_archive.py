"""Read the tensors of a TorchScript archive without running its code.

OpenAI's CLIP checkpoints (``ViT-B-32.pt`` ...) are TorchScript archives: a
zip holding ``code/`` (TorchScript source of the traced model),
``constants.pkl``, ``data/<n>`` (raw tensor storages) and ``data.pkl``, a
pickle of the module tree.  ``torch.jit.load`` compiles and runs ``code/``;
``torch.load(weights_only=True)`` refuses the archive outright.

Here only ``data.pkl`` is read, by torch's own restricted unpickler
(``torch._weights_only_unpickler``, the one behind ``weights_only=True``):

* Each module in ``data.pkl`` is an object of a class named
  ``__torch__.<path>.<Class>`` whose attributes (parameters, buffers,
  sub-modules, flags) are given by a BUILD opcode.  Those class names are
  collected by scanning the pickle's opcodes
  (:func:`plugins.utils.pickle_scan.pickle_global_names`, which only
  parses) and each is mapped to :class:`ScriptModuleRecord`, an inert
  attribute bag defined here.  No name outside ``__torch__.`` is added, so
  any other global (``os.system``, ``builtins.eval`` ...) is still refused by
  torch's allow-list.
* Tensors are rebuilt by torch's allow-listed ``_rebuild_tensor_v2`` from
  the raw bytes of ``data/<n>``.
* ``code/`` and ``constants.pkl`` are never read, compiled or executed.

The module tree is then flattened to a ``{dotted.name: Tensor}`` dict.
"""
from typing import Dict, Iterable, Set

import torch

from .pickle_scan import pickle_global_names


class ScriptModuleRecord:
    """Inert stand-in for a ``__torch__.*`` module object in ``data.pkl``.

    The unpickler creates it with ``__new__`` and fills ``__dict__`` with the
    pickled attributes; it has no behaviour.
    """


def _flatten(obj, prefix: str, out: Dict[str, torch.Tensor],
             seen: Set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
        elif isinstance(value, ScriptModuleRecord):
            _flatten(value, f'{prefix}{name}.', out, seen)


def is_torchscript_archive(zip_reader) -> bool:
    """True for a TorchScript zip (it has ``constants.pkl``)."""
    return torch.serialization._is_torchscript_zip(zip_reader)


def load_torchscript_tensors(zip_reader,
                             map_location='cpu') -> Dict[str, torch.Tensor]:
    """Flattened ``{name: tensor}`` of a TorchScript archive's module tree.

    Args:
        zip_reader: an open ``torch._C.PyTorchFileReader`` of the archive.
        map_location: as for ``torch.load``.

    Returns:
        dict[str, Tensor]: every tensor attribute of every module (the
        parameters and buffers ``torch.jit.load(...).state_dict()`` would
        give), keyed by dotted path.
    """
    data = zip_reader.get_record('data.pkl')
    script_classes = sorted(
        n for n in pickle_global_names(data) if n.startswith('__torch__.'))
    allowed: Iterable = [(ScriptModuleRecord, n) for n in script_classes]
    with torch.serialization.safe_globals(list(allowed)):
        root = torch.serialization._load(
            zip_reader,
            map_location,
            torch._weights_only_unpickler,
            weights_only=True)
    if not isinstance(root, ScriptModuleRecord):
        raise TypeError('TorchScript archive does not hold a module '
                        f'(root object is {type(root).__name__})')
    out: Dict[str, torch.Tensor] = {}
    _flatten(root, '', out, set())
    return out
