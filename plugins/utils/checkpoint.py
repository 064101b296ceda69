"""The one way this package reads a weights file: :func:`safe_load`.

Loading a checkpoint must never run code from it.  Three formats are read:

* ``.safetensors`` (and any file starting with a safetensors header): read by
  ``safetensors``, which has no code path at all.
* torch pickles (``.bin``, ``.pth``, ``.pt``, zip or legacy format): read by
  ``torch.load(weights_only=True)``, torch's restricted unpickler, with the
  explicit allow-list :data:`SAFE_GLOBALS` of harmless value types on top of
  torch's own tensor types.  A pickle naming any other global (a function
  that ``__reduce__`` would call, say ``os.system``) is refused with
  :class:`UnsafeCheckpointError` naming that global.
* TorchScript archives (OpenAI CLIP ``.pt``): only the tensors are read, see
  :mod:`plugins.utils.torchscript_archive`.
"""
import argparse
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch

from .json_file import read_json_object
from .pickle_scan import pickle_global_names
from .state_dict import unwrap_state_dict
from .torchscript_archive import (is_torchscript_archive,
                                  load_torchscript_tensors)

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A weights file could not be read (missing, truncated, corrupt)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle would import a global outside the allow-list (run code).

    Attributes:
        global_name (str): the refused global, e.g. ``'posix.system'``.
    """

    def __init__(self, message: str, global_name: Optional[str] = None):
        super().__init__(message)
        self.global_name = global_name


def _numpy_globals() -> list:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for reading weights
        return []
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [
        type(np.dtype(n)) for n in ('float64', 'float32', 'float16', 'int64',
                                    'int32', 'int16', 'int8', 'uint8', 'bool')
    ]
    return [np.ndarray, np.dtype, _reconstruct, scalar, *dtypes]


#: Globals a weights pickle may name besides torch's tensor/storage types.
#: Plain value types only: numpy arrays and scalars (some checkpoints store
#: metrics as numpy values) and ``argparse.Namespace`` (training arguments
#: stored next to the weights; a bag of attributes).  Nothing callable with
#: side effects.
SAFE_GLOBALS = [argparse.Namespace, *_numpy_globals()]

_SAFETENSORS_EXT = ('.safetensors', )
_REFUSED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)|Unsupported global: (?:GLOBAL )?([\w.]+)'
                             r'|([\w.]+) was not an allowed global')


def non_regular_kind(path: PathLike) -> Optional[str]:
    """What ``path`` is when it exists but is neither a regular file nor a
    folder (``'a FIFO (named pipe)'``, ``'a socket'``, ``'a character
    device'``, ``'a block device'``, ``'a symbolic link to X, which does
    not exist'``); None for a file, a folder or nothing at all.

    Reading a FIFO or a device would block or never end, so such paths are
    refused by name before anything is opened.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except FileNotFoundError:
        if path.is_symlink():
            return (f'a symbolic link to {os.readlink(path)}, which does '
                    'not exist')
        return None
    kinds = ((stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISSOCK,
                                                       'a socket'),
             (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK,
                                                     'a block device'))
    for test, kind in kinds:
        if test(mode):
            return kind
    return None


def _check_file(path: Path) -> None:
    kind = non_regular_kind(path)
    if kind is not None:
        raise CheckpointError(f'{path} is {kind}, not a weights file')
    if not path.exists():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir()
                       if p.suffix in ('.safetensors', '.bin', '.pt', '.pth'))
        raise IsADirectoryError(
            f'{path} is a directory; pass one weights file inside it '
            f'(found: {files or "no .safetensors/.bin/.pt/.pth files"})')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint file is empty (0 bytes): {path}')


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_EXT:
        return True
    # safetensors: 8-byte little-endian header length, then a JSON header.
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{'


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    size = path.stat().st_size
    detail = str(err)
    # torch's weights_only message is long and advises weights_only=False;
    # keep only the reason.
    if 'WeightsUnpickler error:' in detail:
        detail = detail.split('WeightsUnpickler error:')[-1].strip()
        detail = detail.split('\n\n')[0].strip()
    detail = detail.split('. This is an internal miniz error')[0]
    return CheckpointError(
        f'could not read checkpoint {path} ({size} bytes): the file is '
        'truncated, corrupt or not a weights file '
        f'({type(err).__name__}: {detail})')


def _load_safetensors(path: Path, map_location) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    device = 'cpu' if map_location is None else str(map_location)
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # SafetensorError is not importable by name
        raise _corrupt(path, err) from err


def _refused_global(message: str) -> Optional[str]:
    match = _REFUSED_GLOBAL.search(message)
    if match is None:
        return None
    return next(g for g in match.groups() if g)


def _allowed_names(allowed: Iterable) -> set:
    names = set(torch._weights_only_unpickler._get_allowed_globals())
    for obj in allowed:
        if isinstance(obj, tuple):
            names.add(obj[1])
        else:
            names.add(f'{obj.__module__}.{obj.__qualname__}')
    return names


def _first_unsafe_global(path: Path, allowed: Iterable) -> Optional[str]:
    with open(path, 'rb') as f:
        head = f.read(1 << 20)  # the object pickle precedes the tensor bytes
    ok = _allowed_names(allowed)
    return next((n for n in pickle_global_names(head) if n not in ok), None)


def _refusal(path: Path, err: pickle.UnpicklingError,
             allowed: Iterable) -> CheckpointError:
    # torch names the refused global; for pickles it cannot even parse
    # (a plain pickle of protocol 4+), find it by scanning the opcodes.
    name = _refused_global(str(err)) or _first_unsafe_global(path, allowed)
    if name is None:
        return _corrupt(path, err)
    return UnsafeCheckpointError(
        f"refusing to load {path}: its pickle imports '{name}', which is "
        'not on the allow-list of safe types (unpickling it could run '
        'code). Only tensors, containers and plain values are accepted; '
        'if you trust the file, re-save its state dict as .safetensors '
        'in a trusted environment.', name)


def _load_pickle(path: Path, map_location, extra_globals: Iterable) -> Any:
    allowed = SAFE_GLOBALS + list(extra_globals)
    try:
        if zipfile.is_zipfile(path):
            with torch.serialization._open_zipfile_reader(str(path)) as zf:
                if is_torchscript_archive(zf):
                    return load_torchscript_tensors(zf, map_location)
        # Only what is not allow-listed already: the context manager removes
        # its globals on exit, which would also drop process-wide entries
        # (e.g. mmengine's, which --resume needs later in the same process).
        present = set(torch.serialization.get_safe_globals())
        missing = [g for g in allowed if g not in present]
        with torch.serialization.safe_globals(missing):
            return torch.load(
                str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err, allowed) from None
    except Exception as err:  # torch raises many types on garbage input
        raise _corrupt(path, err) from err


def safe_load_object(path: PathLike,
                     map_location='cpu',
                     *,
                     extra_globals: Iterable = ()) -> Any:
    """Read a weights file without running code; return it as stored.

    Like :func:`safe_load` but without unwrapping, for callers that need
    the container (e.g. an epoch counter next to the weights).

    Args:
        path: file to read.
        map_location: device for the tensors. Default: ``'cpu'``.
        extra_globals: more classes to allow-list for this call only (e.g.
            a trusted project's dataclass); see
            ``torch.serialization.add_safe_globals``.
    """
    path = Path(path)
    _check_file(path)
    if _is_safetensors(path):
        return _load_safetensors(path, map_location)
    return _load_pickle(path, map_location, extra_globals)


def safe_load(
    path: PathLike,
    map_location='cpu',
    *,
    key: Optional[str] = None,
    extra_globals: Iterable = ()
) -> Dict[str, torch.Tensor]:
    """Load a state dict from a file without executing code from it.

    Reads ``.safetensors``, torch pickles (``weights_only=True`` with
    :data:`SAFE_GLOBALS`) and TorchScript archives (OpenAI CLIP ``.pt``,
    tensors only), then unwraps common containers (``state_dict``,
    ``model``, ...) and a DDP ``module.`` prefix.

    Args:
        path: the weights file.
        map_location: device for the tensors. Default: ``'cpu'``.
        key (str, optional): container entry holding the weights, when not
            one of the usual names (e.g. ``'state_dict_ema'``).
        extra_globals: classes to allow-list for this call only.

    Returns:
        dict[str, Tensor]: the state dict (tensors only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder (the message lists its
            weights files).
        CheckpointError: the file is empty, truncated or corrupt.
        UnsafeCheckpointError: the pickle names a global outside the
            allow-list.
    """
    obj = safe_load_object(path, map_location, extra_globals=extra_globals)
    try:
        return unwrap_state_dict(obj, key=key)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f'{path}: {err}') from err


def save_safetensors(state: Dict[str, torch.Tensor],
                     path: PathLike,
                     metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write a state dict as ``.safetensors`` (atomically).

    Tensors are made contiguous and storage-sharing tensors are copied
    (safetensors refuses aliases).  The file is written next to its final
    name and renamed, so an interrupted save leaves no partial file.
    """
    from safetensors.torch import save_file
    path = Path(path)
    seen = set()
    out = {}
    for key, value in state.items():
        value = value.detach().contiguous()
        ptr = (value.untyped_storage().data_ptr(), value.device)
        if value.numel() and ptr in seen:
            value = value.clone()
        seen.add(ptr)
        out[key] = value.cpu()
    tmp = path.with_name(path.name + '.tmp')
    save_file(out, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_shard_index(path: PathLike) -> Dict[str, str]:
    """The ``weight_map`` of a sharded export's index
    (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``).

    Args:
        path: the index file.

    Returns:
        dict[str, str]: tensor name -> shard file name (next to the index).

    Raises:
        CheckpointError: the file is not JSON, or not an object with a
            non-empty ``weight_map`` of names to shard files (naming the
            file and what is wrong).
    """
    path = Path(path)
    _check_file(path)
    data = read_json_object(
        path,
        error=CheckpointError,
        expected='with a "weight_map"',
        hint=('a shard index is {"metadata": {...}, "weight_map": '
              '{"tensor name": "shard file", ...}}'))
    weight_map = data.get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        what = ('has no "weight_map" key (keys: '
                f'{sorted(data)})' if 'weight_map' not in data else
                f'has a "weight_map" that is not a non-empty object '
                f'({type(weight_map).__name__})')
        raise CheckpointError(f'{path} {what}')
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise CheckpointError(
            f'{path}: "weight_map" entries must name a shard file; '
            f'{len(bad)} do not, e.g. {bad[0]!r}: {weight_map[bad[0]]!r}')
    return weight_map


def safe_load_sharded(path: PathLike,
                      map_location='cpu') -> Dict[str, torch.Tensor]:
    """Read a sharded export (its index file) shard by shard with
    :func:`safe_load`, checking that every tensor the index lists is found.

    Args:
        path: the index file (``*.index.json``).
        map_location: device for the tensors. Default: ``'cpu'``.

    Returns:
        dict[str, Tensor]: all shards' tensors.

    Raises:
        CheckpointError: a malformed index (see :func:`read_shard_index`),
            or tensors listed in the index that are in no shard.
        FileNotFoundError: a shard named in the index is missing.
    """
    path = Path(path)
    weight_map = read_shard_index(path)
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.exists() and non_regular_kind(shard_path) is None:
            raise FileNotFoundError(
                f'{path} lists shard {shard}, which is not in {path.parent}')
        state.update(safe_load(shard_path, map_location))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f'{path}: {len(missing)} keys listed in the '
                              f'index are in no shard, e.g. {missing[:5]}')
    return state
