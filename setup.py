"""Build and install ``plugins``.

The multi-scale deformable attention op is compiled here:
* the CPU kernel always (``plugins.ops.ms_deform_attn._C_cpu``);
* the CUDA kernel (``_C_cuda``) when torch is a CUDA build and ``nvcc`` is
  found, or when ``FORCE_CUDA=1`` (build on a machine without a GPU), for
  ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``).
``PLUGINS_SKIP_EXT=1`` skips both: ``make setup`` compiles the op into a
cache instead (``python -m plugins.ops.build``), and an uninstalled checkout
JIT-compiles it on first use.
"""
import os

from setuptools import find_packages, setup

def _load_build_config():
    """Load ``plugins/ops/ms_deform_attn/build_config.py`` by path.

    It holds the op's sources and compiler flags, shared with the JIT loader
    and ``python -m plugins.ops.build``; loading it by path avoids importing
    the (not yet installed) package.
    """
    import importlib.util
    path = os.path.join('plugins', 'ops', 'ms_deform_attn', 'build_config.py')
    spec = importlib.util.spec_from_file_location('_msda_build_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _op_extensions():
    if os.environ.get('PLUGINS_SKIP_EXT', '0') == '1':
        return [], {}
    from torch.utils.cpp_extension import (BuildExtension, CppExtension,
                                           CUDAExtension)
    cfg = _load_build_config()
    exts = [CppExtension(
        'plugins.ops.ms_deform_attn._C_cpu', cfg.cpu_sources(),
        extra_compile_args={'cxx': cfg.cxx_flags()},
        extra_link_args=cfg.cpu_link_flags())]
    if cfg.want_cuda():
        os.environ.setdefault('TORCH_CUDA_ARCH_LIST', cfg.DEFAULT_CUDA_ARCHS)
        exts.append(CUDAExtension(
            'plugins.ops.ms_deform_attn._C_cuda', cfg.cuda_sources(),
            include_dirs=cfg.cuda_include_dirs(),
            extra_compile_args={'cxx': cfg.cxx_flags(),
                                'nvcc': cfg.nvcc_flags()}))
    return exts, {'build_ext': BuildExtension.with_options(use_ninja=True)}


def _read_pins():
    pins = {}
    with open(os.path.join('requirements', 'pins.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if '==' in line:
                name, version = line.split('==')
                pins[name.strip()] = version.strip()
    return pins


PINS = _read_pins()


def pinned(*names):
    return [f'{n}=={PINS[n]}' for n in names]


ext_modules, cmdclass = _op_extensions()

setup(
    name='plugins',
    version='0.1.0',
    description='CLIP-family backbones and a multi-scale deformable '
                'cross-attention projector for mmdet and LLaVA-Phi models',
    python_requires='>=3.10',
    packages=find_packages(include=['plugins', 'plugins.*']),
    include_package_data=True,
    package_data={'plugins': ['models/model_configs/*.json',
                              'models/model_configs/**/*',
                              'scoring/prompts/*.txt',
                              'llava/configs/*.json',
                              'ops/ms_deform_attn/csrc/**/*']},
    install_requires=pinned('torch', 'torchvision', 'open_clip_torch', 'timm',
                            'transformers', 'safetensors'),
    extras_require={
        'mmdet': pinned('mmengine', 'mmdet', 'mmcv', 'pycocotools'),
        'llava': pinned('deepspeed'),
        'dev': pinned('pytest', 'pycocotools'),
        'export': pinned('onnx', 'onnxscript', 'onnx-ir', 'onnxruntime'),
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
