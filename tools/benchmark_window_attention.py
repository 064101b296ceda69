"""Peak memory and time of one forward + backward of a CLIP ViT backbone with
global vs windowed attention (issue 16, item 2).

Each variant runs in a fresh subprocess (so one variant's allocations and
the allocator's cache cannot lower or raise the other's numbers):
``OpenCLIPBackbone(model, window_size=..., global_blocks=...)``, random
init, train mode, every parameter trainable, one ``(1, 3, S, S)`` input;
the step is ``model(x)[0].sum().backward()``.

Measured per variant:

* ``time``: seconds of the first step (it includes the one-off position
  embedding resampling, a few ms);
* ``tensor peak``: the peak of tensor memory allocated during a second step
  beyond what was allocated before it (on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU replayed from the profiler's
  allocation events, :func:`tools.benchmark_backbones.peak_memory`);
* ``RSS peak``: on CPU, the process's peak resident set
  (``getrusage(RUSAGE_SELF).ru_maxrss``) after the first step minus its
  resident set just before it (the model and the input are allocated
  before).

``--sdpa math`` forces PyTorch's reference attention kernel, which keeps
the ``(heads, T, T)`` attention weights for the backward (as attention with
an explicit mask or relative-position bias does); the default lets PyTorch
pick its fused kernel (on CPU a flash-attention kernel, which keeps only
``O(T)`` per head), where activations linear in ``T`` dominate.

Usage::

    python tools/benchmark_window_attention.py [--model ViT-B-16]
        [--size 1024] [--window 14] [--global-blocks 2 5 8 11]
        [--device cpu] [--threads 2] [--sdpa default|math]
"""
import argparse
import contextlib
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_variant(model_name: str, size: int, window, global_blocks,
                device: str, threads: int, sdpa: str = 'default') -> dict:
    """One variant, in this process; returns its numbers."""
    sys.path.insert(0, str(ROOT))
    import torch

    from plugins.mmdet_custom.models.backbones import OpenCLIPBackbone
    from tools.benchmark_backbones import peak_memory
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = OpenCLIPBackbone(
        model_name, window_size=window,
        global_blocks=global_blocks).to(device).train()
    x = torch.randn(1, 3, size, size, device=device)

    if sdpa == 'math':
        from torch.nn.attention import SDPBackend, sdpa_kernel
        kernel = functools.partial(sdpa_kernel, SDPBackend.MATH)
    else:
        kernel = contextlib.nullcontext

    def step(inp):
        model.zero_grad(set_to_none=True)
        with kernel():
            model(inp)[0].float().sum().backward()

    def sync():
        if device.startswith('cuda'):
            torch.cuda.synchronize()

    rss_before = _rss_mib()
    sync()
    t0 = time.perf_counter()
    step(x)
    sync()
    seconds = time.perf_counter() - t0
    # ru_maxrss is in KiB on Linux
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tensor_peak = peak_memory(step, x)
    return dict(
        model=model_name,
        size=size,
        window_size=window,
        global_blocks=list(model.global_blocks) if window else None,
        device=device,
        threads=threads,
        sdpa=sdpa,
        time_s=round(seconds, 2),
        tensor_peak_mib=round(tensor_peak, 1),
        rss_peak_delta_mib=round(rss_peak - rss_before, 1)
        if device == 'cpu' else None,
        torch=torch.__version__,
        when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='ViT-B-16')
    p.add_argument('--size', type=int, default=1024)
    p.add_argument('--window', type=int, default=14)
    p.add_argument('--global-blocks', type=int, nargs='*',
                   default=[2, 5, 8, 11])
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--sdpa', choices=['default', 'math'], default='default')
    p.add_argument('--variant', choices=['global', 'windowed'],
                   help='run one variant in this process (internal)')
    a = p.parse_args()
    if a.variant:
        window = a.window if a.variant == 'windowed' else None
        blocks = a.global_blocks if a.variant == 'windowed' else None
        print(json.dumps(run_variant(a.model, a.size, window, blocks,
                                     a.device, a.threads, a.sdpa)))
        return
    rows = {}
    for variant in ('global', 'windowed'):
        cmd = [sys.executable, __file__, '--variant', variant] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, capture_output=True,
                             text=True).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(rows[variant]), flush=True)
    g, w = rows['global'], rows['windowed']
    print('\n| attention | time (s) | tensor peak (MiB) | RSS peak (MiB) |')
    print('|---|---|---|---|')
    for name, r in (('global', g), (
            f"window {a.window}, global blocks "
            f"{', '.join(map(str, w['global_blocks']))}", w)):
        print(f"| {name} | {r['time_s']} | {r['tensor_peak_mib']} | "
              f"{r['rss_peak_delta_mib']} |")
    print(f"\nwindowed / global: tensor peak "
          f"{w['tensor_peak_mib'] / g['tensor_peak_mib']:.2f}, time "
          f"{w['time_s'] / g['time_s']:.2f}")


if __name__ == '__main__':
    main()
