"""Find, build and load the compiled ``ms_deform_attn`` kernels.

Two shared libraries: ``_C_cpu`` adds the CPU kernels of the ``plugins::``
ops (whose schemas ``registration.py`` defines on ``import plugins.ops``),
``_C_cuda`` the CUDA kernels.  Each is looked up on first use of the op
(never on import), in this order:

1. the extension built by ``pip install .`` inside this package folder;
2. the cache ``$PLUGINS_CACHE_DIR/ops/<key>/`` written by
   ``python -m plugins.ops.build`` (``make setup``), where ``<key>`` hashes
   the sources, flags, torch version and CUDA arch list, so a stale build is
   never picked up and an unchanged one is never rebuilt;
3. a JIT compile with ``torch.utils.cpp_extension.load`` into that cache;
4. nothing: the op then runs the PyTorch reference, with one warning.
"""
import glob
import hashlib
import os
import shutil
import sys
import threading
import time
import warnings

import torch

from . import build_config

KINDS = ('cpu', 'cuda')
_EXTENSION = {'cpu': '_C_cpu', 'cuda': '_C_cuda'}

_lock = threading.RLock()
# kind -> dict(source=..., path=...) once loaded, or dict(source='none',
# reason=...) once it is known that no kernel can be had.
_state = {}
_warned = set()


def cache_root() -> str:
    """``$PLUGINS_CACHE_DIR/ops`` (default ``~/.cache/plugins/ops``)."""
    root = os.environ.get('PLUGINS_CACHE_DIR')
    if not root:
        xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(
            os.path.expanduser('~'), '.cache')
        root = os.path.join(xdg, 'plugins')
    return os.path.join(root, 'ops')


def _build_args(kind: str) -> dict:
    """Everything that goes into compiling ``kind`` (and into its key)."""
    if kind == 'cpu':
        return dict(sources=build_config.cpu_sources(absolute=True),
                    extra_cflags=build_config.cxx_flags(),
                    extra_ldflags=build_config.cpu_link_flags(),
                    extra_include_paths=[], archs='')
    return dict(sources=build_config.cuda_sources(absolute=True),
                extra_cflags=build_config.cxx_flags(),
                extra_cuda_cflags=build_config.nvcc_flags(),
                extra_include_paths=build_config.cuda_include_dirs(),
                extra_ldflags=[f'-L{d}' for d in build_config.cuda_library_dirs()],
                archs=build_config.cuda_arch_list())


def cache_key(kind: str) -> str:
    """``<kind>-<hash>`` of the sources, flags, torch version and archs.

    File contents (not mtimes) are hashed, so a fresh clone of the same
    commit finds the build of an earlier clone.
    """
    args = _build_args(kind)
    h = hashlib.sha256()
    for path in args['sources'] + build_config.header_files(kind):
        h.update(os.path.relpath(path, build_config.CSRC).encode())
        with open(path, 'rb') as f:
            h.update(f.read())
    for name in sorted(args):
        if name not in ('sources', 'extra_include_paths', 'extra_ldflags'):
            h.update(f'{name}={args[name]}'.encode())
    h.update(f'torch={torch.__version__};cuda={torch.version.cuda};'
             f'py={sys.version_info[:2]}'.encode())
    return f'{kind}-{h.hexdigest()[:16]}'


def _library_file(kind: str) -> str:
    return f'plugins_msda_{kind}.so'


def cached_library(kind: str) -> str:
    """Path of the cached build of ``kind`` for the current key."""
    return os.path.join(cache_root(), cache_key(kind), _library_file(kind))


def installed_library(kind: str):
    """The library ``pip install .`` put into this package, or None."""
    found = sorted(glob.glob(os.path.join(build_config.HERE,
                                          _EXTENSION[kind] + '*.so')))
    return found[0] if found else None


def _can_compile(kind: str):
    """None if ``kind`` can be compiled here, else the reason why not."""
    cxx = os.environ.get('CXX', 'c++')
    if shutil.which(cxx) is None:
        return f'no C++ compiler ({cxx!r}) found'
    if shutil.which('ninja') is None:
        import importlib.util
        if importlib.util.find_spec('ninja') is None:
            return 'ninja is not installed'
    if kind == 'cuda' and not build_config.cuda_sources():
        return 'no CUDA sources in this copy of the package'
    if kind == 'cuda' and not build_config.want_cuda():
        if not torch.version.cuda:
            return 'torch is not a CUDA build'
        if build_config.nvcc_path() is None:
            return 'nvcc not found'
        return 'disabled by PLUGINS_BUILD_CUDA=0'
    return None


def compile_library(kind: str, verbose: bool = False) -> str:
    """Compile ``kind`` into the cache (if its key is not there) and return
    the library path.  The build runs in a private folder that is renamed
    into place, so concurrent builds never see a half-written library."""
    target = cached_library(kind)
    if os.path.isfile(target):
        return target
    reason = _can_compile(kind)
    if reason is not None:
        raise RuntimeError(f'cannot compile the {kind} kernel: {reason}')
    from torch.utils import cpp_extension

    final_dir = os.path.dirname(target)
    tmp_dir = f'{final_dir}.tmp-{os.getpid()}'
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    args = _build_args(kind)
    archs = args.pop('archs')
    old_archs = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if kind == 'cuda':
        os.environ['TORCH_CUDA_ARCH_LIST'] = archs
    try:
        cpp_extension.load(name=f'plugins_msda_{kind}', build_directory=tmp_dir,
                           is_python_module=False, verbose=verbose,
                           with_cuda=(kind == 'cuda'), **args)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if kind == 'cuda':
            if old_archs is None:
                os.environ.pop('TORCH_CUDA_ARCH_LIST', None)
            else:
                os.environ['TORCH_CUDA_ARCH_LIST'] = old_archs
    with open(os.path.join(tmp_dir, 'BUILD_INFO'), 'w') as f:
        f.write(f'key={cache_key(kind)}\ntorch={torch.__version__}\n'
                f'cuda={torch.version.cuda}\narchs={archs}\n')
    # Object files are only needed by ninja for an incremental rebuild,
    # which a key-addressed folder never gets.
    for obj in glob.glob(os.path.join(tmp_dir, '*.o')):
        os.remove(obj)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _load_file(path: str) -> None:
    torch.ops.load_library(path)


def _try_load(kind: str, compile: bool) -> dict:
    errors = []
    path = installed_library(kind)
    if path:
        try:
            _load_file(path)
            return dict(source='installed', path=path)
        except Exception as e:  # e.g. built against another torch
            errors.append(f'installed {path}: {e}')
    path = cached_library(kind)
    if os.path.isfile(path):
        try:
            _load_file(path)
            return dict(source='cache', path=path)
        except Exception as e:
            errors.append(f'cached {path}: {e}')
    reason = _can_compile(kind) if compile else 'not built yet'
    if reason is not None:
        errors.append(reason)
        return dict(source='none', reason='; '.join(errors))
    print(f'[plugins.ops] compiling the {kind} ms_deform_attn kernel into '
          f'{os.path.dirname(path)} (first use; once per machine)',
          file=sys.stderr)
    t0 = time.time()
    try:
        before = set(torch.ops.loaded_libraries)
        path = compile_library(kind)
        # cpp_extension.load loads what it builds; if another process won
        # the race, the cached file is loaded here instead.
        if set(torch.ops.loaded_libraries) == before:
            _load_file(path)
        print(f'[plugins.ops] compiled in {time.time() - t0:.0f}s',
              file=sys.stderr)
        return dict(source='jit', path=path)
    except Exception as e:
        errors.append(f'JIT compile failed: {e}')
        return dict(source='none', reason='; '.join(errors))


def load(kind: str, compile: bool = True) -> bool:
    """Load the ``kind`` (``'cpu'`` or ``'cuda'``) library; True on success.

    ``'cuda'`` loads ``'cpu'`` first (CPU tensors of a CUDA model).  With
    ``compile=False`` only an installed or cached build is loaded.  The
    outcome is remembered, so this is cheap after the first call.
    """
    if kind in _state:
        return _state[kind]['source'] != 'none'
    with _lock:
        if kind in _state:
            return _state[kind]['source'] != 'none'
        if kind == 'cuda' and not load('cpu', compile):
            _state[kind] = dict(source='none', reason='the CPU library is '
                                'not available')
            return False
        from . import registration  # noqa: F401  (the schemas, before kernels)
        _state[kind] = _try_load(kind, compile)
        return _state[kind]['source'] != 'none'


def warn_fallback(kind: str) -> None:
    """Warn once per kind that the reference implementation runs instead
    (pointing at the caller of ``ms_deform_attn``)."""
    if kind in _warned:
        return
    _warned.add(kind)
    reason = _state.get(kind, {}).get('reason', 'not loaded')
    warnings.warn(
        f'plugins.ops.ms_deform_attn: no compiled {kind} kernel ({reason}); '
        f'falling back to the PyTorch reference, which is slower and uses '
        f'more memory. Run `python -m plugins.ops.build` to compile it.',
        RuntimeWarning, stacklevel=3)


def status(kind: str) -> dict:
    """What :func:`load` found for ``kind`` (without loading)."""
    return dict(_state.get(kind, dict(source='not loaded yet')))
