"""Sources and compiler flags of the ``ms_deform_attn`` extensions.

One definition shared by the three ways the op gets built:

* ``setup.py`` (``pip install .``) loads this file *by path*, before the
  package is importable;
* ``python -m plugins.ops.build`` compiles into a cache (``make setup``);
* the runtime loader JIT-compiles with ``torch.utils.cpp_extension.load``
  when neither an installed nor a cached build exists.

So it may import only ``os``, ``glob``, ``sysconfig`` and ``torch``.
"""
import glob
import os
import sysconfig

import torch

#: CUDA architectures compiled when ``TORCH_CUDA_ARCH_LIST`` is not set
#: (A100 and H100 class GPUs).
DEFAULT_CUDA_ARCHS = '8.0;9.0'

#: Folder holding this file; the sources live under ``csrc/``.
HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, 'csrc')


def _paths(patterns, absolute):
    files = sorted(f for p in patterns for f in glob.glob(os.path.join(CSRC, p)))
    if absolute:
        return files
    # setuptools wants sources relative to setup.py (the current folder).
    return [os.path.relpath(f) for f in files]


def cpu_sources(absolute=False):
    """C++ sources of ``_C_cpu`` (op schema and CPU kernel)."""
    return _paths(['cpu/*.cpp'], absolute)


def cuda_sources(absolute=False):
    """CUDA/C++ sources of ``_C_cuda`` (CUDA kernel)."""
    return _paths(['cuda/*.cu', 'cuda/*.cpp'], absolute)


def header_files(kind):
    """Headers ``kind`` (``'cpu'`` or ``'cuda'``) includes (part of its
    build cache key)."""
    own = ['cpu/*.h'] if kind == 'cpu' else ['cuda/*.h', 'cuda/*.cuh']
    return _paths(['*.h'] + own, True)


def cxx_flags():
    # torch 2.14's headers need C++20; at::parallel_for is an inline
    # OpenMP region, so without -fopenmp it would run on one thread.
    # -Wno-psabi: the 64-byte vectors of csrc/cpu/simd.h only live inside
    # always-inline functions, so GCC's ABI note about them is noise.
    # -fno-trapping-math: lets GCC if-convert and vectorise the float
    # comparisons of the CPU kernel's point planning; the kernels never read
    # floating-point exception flags, so results are unchanged.
    return ['-O3', '-std=c++20', '-fopenmp', '-DNDEBUG', '-Wno-psabi',
            '-fno-trapping-math']


def cpu_link_flags():
    # Resolves to the libgomp torch already loaded (same soname).
    return ['-fopenmp']


def nvcc_flags():
    return ['-O3', '-std=c++20', '-DNDEBUG', '--expt-relaxed-constexpr',
            '-lineinfo']


def _site_packages():
    dirs = [sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'],
            os.path.dirname(os.path.dirname(torch.__file__))]
    seen = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def _which(name):
    for folder in os.environ.get('PATH', '').split(os.pathsep):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def cuda_home():
    """Root of the CUDA toolkit (holding ``include/cuda_runtime.h``), or None.

    ``CUDA_HOME``/``CUDA_PATH`` win; otherwise the folder above ``nvcc``,
    then ``/usr/local/cuda`` (covers an ``nvcc`` that is a wrapper script in
    ``/usr/local/bin``, where torch would guess ``/usr/local``).
    """
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = _which('nvcc')
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append('/usr/local/cuda')
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h')):
            return root
    return None


def nvcc_path():
    """The ``nvcc`` to use, or None."""
    root = cuda_home()
    if root and os.path.isfile(os.path.join(root, 'bin', 'nvcc')):
        return os.path.join(root, 'bin', 'nvcc')
    return _which('nvcc')


def _pip_cuda_dirs(sub):
    """``site-packages/nvidia/cu<major>/<sub>`` of the pip CUDA wheels."""
    if not torch.version.cuda:
        return []
    major = torch.version.cuda.split('.')[0]
    found = []
    for site in _site_packages():
        path = os.path.join(site, 'nvidia', f'cu{major}', sub)
        if os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def cuda_include_dirs():
    """Include folders for the CUDA extension.

    torch's CUDA headers include ``cusparse.h``/``cublas_v2.h``, which a
    minimal system toolkit may lack; torch's pip CUDA wheels ship them under
    ``site-packages/nvidia/cu13/include``.
    """
    dirs = []
    root = cuda_home()
    if root:
        dirs.append(os.path.join(root, 'include'))
    return dirs + _pip_cuda_dirs('include')


def cuda_library_dirs():
    """Library folders holding ``libcudart`` for the CUDA extension."""
    dirs = []
    root = cuda_home()
    if root:
        for sub in ('lib64', 'lib'):
            if os.path.isdir(os.path.join(root, sub)):
                dirs.append(os.path.join(root, sub))
    return dirs + _pip_cuda_dirs('lib')


def want_cuda():
    """Whether to compile the CUDA kernel.

    ``PLUGINS_BUILD_CUDA=0`` disables it; ``FORCE_CUDA=1`` or
    ``PLUGINS_BUILD_CUDA=1`` forces it (machines without a GPU); otherwise
    it is built when torch is a CUDA build and ``nvcc`` is found.
    """
    flag = os.environ.get('PLUGINS_BUILD_CUDA', 'auto').strip().lower()
    if flag in ('0', 'false', 'no', 'off'):
        return False
    if flag in ('1', 'true', 'yes', 'on') or os.environ.get('FORCE_CUDA') == '1':
        return True
    return bool(torch.version.cuda) and nvcc_path() is not None


def cuda_arch_list():
    """The arch list to compile: ``TORCH_CUDA_ARCH_LIST`` or the default."""
    archs = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    return archs or DEFAULT_CUDA_ARCHS
