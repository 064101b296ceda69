"""``python -m plugins.ops.info``: which ms_deform_attn backend runs here.

Loads the kernels the way the op does on first use (which may JIT-compile
them) and prints the active backend per device, the CUDA archs compiled
into the CUDA kernel, and the torch/CUDA versions.
"""
import sys

import torch

from .ms_deform_attn import build_config, loader


def _describe(kind: str) -> str:
    state = loader.status(kind)
    if state['source'] == 'none':
        return f'PyTorch reference (no kernel: {state["reason"]})'
    if 'path' not in state:
        return state['source']
    return f'compiled kernel, {state["source"]}: {state["path"]}'


def collect(load_cuda: bool = True) -> dict:
    """Backend facts as a dict (loads the kernels)."""
    loader.load('cpu')
    if load_cuda:
        # Compiling a CUDA kernel that cannot run here would only cost time.
        loader.load('cuda', compile=torch.cuda.is_available())
    info = {
        'torch': torch.__version__,
        'torch CUDA': torch.version.cuda or 'none (CPU build)',
        'GPU': (torch.cuda.get_device_name() if torch.cuda.is_available()
                else 'none visible'),
        'backend cpu': _describe('cpu'),
        'backend cuda': _describe('cuda'),
        'cache': loader.cache_root(),
        'CUDA archs requested': build_config.cuda_arch_list(),
    }
    if loader.status('cuda')['source'] not in ('none', 'not loaded yet'):
        archs = torch.ops.plugins.ms_deform_attn_cuda_archs()
        info['CUDA archs compiled'] = ', '.join(
            f'sm_{a // 10}' for a in archs) or 'unknown'
    else:
        info['CUDA archs compiled'] = 'none'
    return info


def main() -> int:
    for key, value in collect().items():
        print(f'{key:>22}: {value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
