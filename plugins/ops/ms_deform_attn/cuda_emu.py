"""The CUDA kernels compiled for the CPU: a test harness, not a backend.

``csrc/cuda/ms_deform_attn_cuda.cu`` -- the very file nvcc compiles -- is
compiled by the host C++ compiler with ``csrc/cuda_emu/cuda_emu.h`` forced in
(the CUDA built-ins it uses, emulated: fiber warps, real atomics, shuffled
blocks, launch limits; see that header) and ``csrc/cuda_emu`` first on the
include path (it shadows the three ``c10/cuda`` headers).  The library runs
the kernels on CPU tensors through ops of its own namespace::

    emu = cuda_emu.build()
    out = emu.forward(value, shapes, starts, locations, weights)
    grads = emu.backward(grad_out, value, shapes, starts, locations, weights)
    emu.launches()   # names of the kernel instantiations run since last call

Builds are cached under ``loader.cache_root()`` by a hash of every source
file's text and the flags, so an edited ``.cu`` is always rebuilt.  ``csrc``
may be a modified copy of the sources (the planted-bug tests).  With
``sanitize=True`` the library is built with AddressSanitizer and UBSan; it
can only be loaded by a Python started with ``LD_PRELOAD`` of the ASan
runtime (:func:`sanitizer_env`).

``python -m plugins.ops.ms_deform_attn.cuda_emu [--sanitize]`` only builds
(and prints the library's path); the tests are ``pytest -m cuda_emu``.
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys

import torch

from . import build_config, loader

EMU_DIR = 'cuda_emu'
# -O1: compiles in half the time of -O3 and runs the small test problems
# just as fast; the rest as the real CPU build (C++20, OpenMP for at::).
_OPT = '-O1'
_SANITIZE = ['-fsanitize=address,undefined', '-fno-sanitize-recover=undefined',
             '-fno-sanitize=vptr', '-fno-omit-frame-pointer', '-g1']


def _sources(csrc):
    """Every file whose text goes into the build (and its cache key)."""
    patterns = ['*.h', 'cuda/*.cu', 'cuda/*.h', f'{EMU_DIR}/*.h',
                f'{EMU_DIR}/*.cpp', f'{EMU_DIR}/c10/cuda/*.h']
    return sorted(f for p in patterns for f in glob.glob(os.path.join(csrc, p)))


def _flags(sanitize):
    flags = [f for f in build_config.cxx_flags() if not f.startswith('-O')]
    flags += [_OPT, '-fPIC', '-fvisibility=hidden', '-Wno-unknown-pragmas',
              f'-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}']
    return flags + (_SANITIZE if sanitize else [])


def cache_key(csrc=build_config.CSRC, sanitize=False):
    """Hash of the sources' text, the flags and the torch version."""
    h = hashlib.sha256()
    for path in _sources(csrc):
        h.update(os.path.relpath(path, csrc).encode())
        with open(path, 'rb') as f:
            h.update(f.read())
    h.update(' '.join(_flags(sanitize)).encode())
    h.update(f'torch={torch.__version__};py={sys.version_info[:2]}'.encode())
    return h.hexdigest()[:16]


def sanitizer_env(env=None):
    """``env`` (default ``os.environ``) plus what a Python process needs to
    load a ``sanitize=True`` build: the ASan runtime preloaded, leak checks
    off (CPython and torch keep their allocations), halt on the first
    error."""
    env = dict(os.environ if env is None else env)
    cxx = os.environ.get('CXX', 'c++')
    def runtime(name):
        return subprocess.run([cxx, f'-print-file-name={name}'], check=True,
                              capture_output=True, text=True).stdout.strip()
    # libstdc++ too: python is not linked with it, and ASan must find the
    # real __cxa_throw when it starts, or the first C++ exception aborts.
    env['LD_PRELOAD'] = f'{runtime("libasan.so")} {runtime("libstdc++.so")}'
    env['ASAN_OPTIONS'] = 'detect_leaks=0:halt_on_error=1:abort_on_error=0'
    env['UBSAN_OPTIONS'] = 'print_stacktrace=1:halt_on_error=1'
    return env


def compile_library(csrc=build_config.CSRC, sanitize=False, verbose=False):
    """Compile (unless cached) and return the library's path."""
    from torch.utils import cpp_extension

    csrc = os.path.abspath(csrc)
    key = cache_key(csrc, sanitize)
    name = f'cuda_emu_{"asan_" if sanitize else ""}{key}'
    final_dir = os.path.join(loader.cache_root(), name)
    target = os.path.join(final_dir, 'libmsda_cuda_emu.so')
    if os.path.isfile(target):
        return target
    tmp_dir = f'{final_dir}.tmp-{os.getpid()}'
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    # The translation unit: the .cu itself, then the registrations.
    unit = os.path.join(tmp_dir, 'emu.cpp')
    with open(unit, 'w') as f:
        f.write(f'#define MSDA_EMU_NS msda_emu_{key}\n'
                f'#include "{os.path.join(csrc, "cuda", "ms_deform_attn_cuda.cu")}"\n'
                f'#include "{os.path.join(csrc, EMU_DIR, "ops_emu.cpp")}"\n')
    includes = [os.path.join(csrc, EMU_DIR)] + cpp_extension.include_paths()
    libs = cpp_extension.library_paths()
    cmd = ([os.environ.get('CXX', 'c++'), '-shared', '-include',
            os.path.join(csrc, EMU_DIR, 'cuda_emu.h')] + _flags(sanitize)
           + [f'-I{d}' for d in includes] + [unit, '-o',
                                              os.path.join(tmp_dir, os.path.basename(target))]
           + [f'-L{d}' for d in libs] + ['-lc10', '-ltorch_cpu', '-ltorch'])
    if verbose:
        print(' '.join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise RuntimeError(f'cuda_emu: compiling {csrc} failed '
                           f'(exit {done.returncode}):\n{done.stderr[-8000:]}')
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


class Emulator:
    """The ops of one loaded emulation build (CPU tensors in and out)."""

    def __init__(self, path):
        self.path = path
        self.namespace = 'msda_emu_' + os.path.basename(
            os.path.dirname(path)).rsplit('_', 1)[-1]
        torch.ops.load_library(path)
        self._ops = getattr(torch.ops, self.namespace)
        self._symbols = None

    def forward(self, value, spatial_shapes, level_start_index,
                sampling_locations, attention_weights):
        """``ms_deform_attn_forward_cuda`` run by the emulator."""
        return self._ops.forward(value, spatial_shapes, level_start_index,
                                 sampling_locations, attention_weights)

    def backward(self, grad_output, value, spatial_shapes, level_start_index,
                 sampling_locations, attention_weights):
        """``ms_deform_attn_backward_cuda``: (grad_value, grad_locations,
        grad_weights)."""
        return self._ops.backward(grad_output, value, spatial_shapes,
                                  level_start_index, sampling_locations,
                                  attention_weights)

    def level_errors(self):
        """``ms_deform_attn_cuda_level_errors``: 1 if a call skipped a bad
        level since the last report, else 0 (device index -1: the CPU
        tensors' index, under which the emulated calls count)."""
        return self._ops.level_errors(-1)

    def _symbol_table(self):
        if self._symbols is None:
            out = subprocess.run(['nm', '-C', '--defined-only', self.path],
                                 check=True, capture_output=True, text=True).stdout
            self._symbols = {}
            for line in out.splitlines():
                parts = line.split(' ', 2)
                if len(parts) == 3 and parts[1] in 'tTwW':
                    self._symbols[int(parts[0], 16)] = parts[2]
        return self._symbols

    def kernels(self):
        """Every kernel instantiation compiled into the library (the
        functions of plugins::msda named ``*_kernel``)."""
        return {name for name in self._symbol_table().values()
                if name.split('(')[0].startswith(('void plugins::msda::', 'plugins::msda::'))
                and re.search(r'::\w+_kernel[<(]', name)}

    def launches(self):
        """Kernel instantiations launched since the last call (demangled
        names, templates and all)."""
        self._symbol_table()
        names = []
        for rec in self._ops.launches():
            if rec.startswith('0x'):
                rec = self._symbols.get(int(rec, 16), rec)
            names.append(rec)
        return names


_loaded = {}


def build(csrc=build_config.CSRC, sanitize=False, verbose=False) -> Emulator:
    """Compile (unless cached) and load the emulation of ``csrc``'s CUDA
    kernels (once per process and build)."""
    path = compile_library(csrc, sanitize, verbose)
    if path not in _loaded:
        _loaded[path] = Emulator(path)
    return _loaded[path]


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sanitize', action='store_true',
                        help='the ASan+UBSan build')
    args = parser.parse_args()
    print(compile_library(sanitize=args.sanitize, verbose=True))
