"""Throughput and peak memory of the CLIP-family backbones vs upstream.

For each backbone the same architecture's bare upstream forward is run in
the same process, interleaved with ours (random weights, frozen, eval,
``torch.no_grad``):

* ``openclip``: ``OpenCLIPBackbone('ViT-B-16')`` vs open_clip's
  ``visual.forward_intermediates(x, indices=[11],
  normalize_intermediates=True, intermediates_only=True)``;
* ``biomedclip``: ``BiomedCLIPBackbone()`` vs its timm trunk's
  ``forward_intermediates(x, indices=[11], norm=True,
  intermediates_only=True)``;
* ``surgeryclip`` / ``conceptclip``: when those classes exist, against the
  open_clip forward of the same ViT (``ViT-B-16``) / SigLIP
  ``ViT-SO400M-14-SigLIP-384`` (for SurgeryCLIP this includes the cost of
  its second, value-value path, which plain CLIP does not compute);
* ``surgeryclip-dualpath``: ``SurgeryCLIPBackbone`` against the host-free
  ``plugins.models.clip_surgery.SurgeryCLIPVisual.forward_map`` (the same
  dual path without the backbone around it).

Upstream models have a fixed position-embedding size, so for each input
size the upstream model is built for that size (``force_image_size``);
ours builds once and resamples its position embedding (cached).

Memory: the peak of tensor memory allocated during one forward, beyond
what was allocated before it (on CUDA ``torch.cuda.max_memory_allocated``;
on CPU replayed from the profiler's allocation events).

Usage::

    python tools/benchmark_backbones.py [--models openclip biomedclip ...]
        [--sizes 224x224 800x1344] [--batch 1] [--iters 5] [--device cpu]
        [--threads 2] [--tiny] [--write docs/benchmarks.md]
"""
import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTION = '## CLIP-family single-scale backbones (issue 5)'


# ----------------------------------------------------------------------
# What to compare
# ----------------------------------------------------------------------
def _open_clip_bare(model_name: str, index: int):
    """Factory: size -> bare open_clip ViT forward for that size."""
    from plugins.models import create_model

    def build(size):
        visual = create_model(model_name, image_size=size).visual.eval()
        visual.requires_grad_(False)

        def run(x):
            return visual.forward_intermediates(
                x,
                indices=[index],
                normalize_intermediates=True,
                intermediates_only=True)['image_intermediates'][-1]

        return visual, run

    return build


def _timm_bare(model_name: str, index: int):
    from plugins.models import create_model

    def build(size):
        trunk = create_model(model_name, image_size=size).visual.trunk.eval()
        trunk.requires_grad_(False)

        def run(x):
            return trunk.forward_intermediates(
                x, indices=[index], norm=True, intermediates_only=True)[-1]

        return trunk, run

    return build


def _surgery_bare(model_name: str, surgery_depth: int):
    """Factory: size -> the host-free CLIP Surgery tower's dense forward
    (``SurgeryCLIPVisual.forward_map``): the same dual-path computation
    without the backbone's bookkeeping, so the difference is the adapter's
    overhead."""
    from plugins.models import create_model
    from plugins.models.clip_surgery import SurgeryCLIPVisual

    def build(size):
        visual = create_model(model_name, image_size=size).visual.eval()
        visual.requires_grad_(False)
        tower = SurgeryCLIPVisual(visual, surgery_depth).eval()
        return tower, tower.forward_map

    return build


def benchmark_specs(tiny: bool) -> Dict[str, Tuple[Callable, Callable]]:
    """name -> (build ours, build bare(size)); guarded for optional ones."""
    import plugins.mmdet_custom.models.backbones as bb
    from plugins.models import BIOMEDCLIP_MODEL_NAME

    vit = 'ViT-Tiny-16-test' if tiny else 'ViT-B-16'
    vit_last = 3 if tiny else 11
    biomed = 'BiomedCLIP-Tiny-test' if tiny else BIOMEDCLIP_MODEL_NAME
    biomed_last = 5 if tiny else 11
    specs = {
        'openclip': (lambda: bb.OpenCLIPBackbone(vit, frozen=True),
                     _open_clip_bare(vit, vit_last), f'OpenCLIP {vit}'),
        'biomedclip': (lambda: bb.BiomedCLIPBackbone(biomed, frozen=True),
                       _timm_bare(biomed,
                                  biomed_last), f'BiomedCLIP ({biomed})'),
    }
    if hasattr(bb, 'SurgeryCLIPBackbone'):
        surgery_depth = 2 if tiny else 6

        def surgery():
            return bb.SurgeryCLIPBackbone(
                model_name=vit, frozen=True, surgery_depth=surgery_depth)

        specs['surgeryclip'] = (surgery, _open_clip_bare(vit, vit_last),
                                f'SurgeryCLIP {vit}')
        specs['surgeryclip-dualpath'] = (
            surgery, _surgery_bare(vit, surgery_depth),
            f'SurgeryCLIP {vit} (vs its bare dual path)')
    if hasattr(bb, 'ConceptCLIPBackbone') and not tiny:
        so400m = 'ViT-SO400M-14-SigLIP-384'
        specs['conceptclip'] = (lambda: bb.ConceptCLIPBackbone(frozen=True),
                                _open_clip_bare(so400m, 26),
                                'ConceptCLIP (vs SigLIP SO400M)')
    return specs


# ----------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------
def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_memory(fn: Callable, x: torch.Tensor) -> float:
    """Peak tensor memory (MiB) allocated by ``fn(x)`` beyond what was
    allocated before (the output included)."""
    gc.collect()
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        fn(x)
        torch.cuda.synchronize(x.device)
        return (torch.cuda.max_memory_allocated(x.device) - base) / 2**20
    # CPU has no allocator statistics: replay the profiler's allocation
    # and free events in time order.
    from torch.profiler import ProfilerActivity, profile
    with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == '[memory]'),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def time_interleaved(fns: List[Callable], x: torch.Tensor, iters: int,
                     warmup: int) -> List[float]:
    """Median seconds per call of each fn, calls interleaved (fair under
    background load)."""
    for _ in range(warmup):
        for fn in fns:
            fn(x)
    _sync(x.device)
    times = [[] for _ in fns]
    for _ in range(iters):
        for i, fn in enumerate(fns):
            _sync(x.device)
            t0 = time.perf_counter()
            fn(x)
            _sync(x.device)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _per_size(values: List[int], n: int, flag: str) -> List[int]:
    if len(values) not in (1, n):
        raise SystemExit(f'{flag} takes 1 or {n} values, got {values}')
    return values * n if len(values) == 1 else values


def run(args) -> List[dict]:
    device = torch.device(args.device)
    specs = benchmark_specs(args.tiny)
    rows = []
    for name in args.models:
        if name not in specs:
            print(f'skip {name}: not available', file=sys.stderr)
            continue
        build_ours, build_bare, label = specs[name]
        torch.manual_seed(0)
        ours = build_ours().to(device).eval()
        n = len(args.sizes)
        for size, iters, warmup in zip(args.sizes,
                                       _per_size(args.iters, n, '--iters'),
                                       _per_size(args.warmup, n, '--warmup')):
            bare_module, bare = build_bare(size)
            bare_module.to(device)
            x = torch.randn(args.batch, 3, *size, device=device)
            with torch.no_grad():
                t_ours, t_bare = time_interleaved([ours, bare], x, iters,
                                                  warmup)
                mem_ours = peak_memory(ours, x)
                mem_bare = peak_memory(bare, x)
            row = dict(
                model=label,
                size=f'{size[0]}x{size[1]}',
                batch=args.batch,
                iters=iters,
                ips_ours=args.batch / t_ours,
                ips_bare=args.batch / t_bare,
                overhead=100 * (t_ours / t_bare - 1),
                mem_ours=mem_ours,
                mem_bare=mem_bare)
            rows.append(row)
            print(format_row(row), flush=True)
            del bare_module, bare
            gc.collect()
        del ours
        gc.collect()
    return rows


# ----------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------
HEADER = ('| backbone | input | batch | ours img/s | upstream img/s | '
          'time overhead | ours peak MiB | upstream peak MiB |\n'
          '|---|---|---|---|---|---|---|---|')


def format_row(r: dict) -> str:
    return (f"| {r['model']} | {r['size']} | {r['batch']} | "
            f"{r['ips_ours']:.3g} | {r['ips_bare']:.3g} | "
            f"{r['overhead']:+.1f} % | {r['mem_ours']:.1f} | "
            f"{r['mem_bare']:.1f} |")


def device_name(device: str) -> str:
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    import os
    return (f'CPU, {torch.get_num_threads()} threads '
            f'({os.cpu_count()} cores visible)')


def load_average() -> str:
    import os
    try:
        return ', '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def section_text(rows: List[dict], args) -> str:
    cmd = ' '.join(['python tools/benchmark_backbones.py'] + sys.argv[1:])
    lines = [
        SECTION, '', f'Measured with `{cmd}` on {device_name(args.device)}, '
        f'torch {torch.__version__}, random weights, frozen, eval, '
        '`torch.no_grad()`; median of '
        f'{"/".join(map(str, args.iters))} interleaved runs (per '
        f'size) after {"/".join(map(str, args.warmup))} warm-up runs. '
        '"upstream" is the bare open_clip/timm forward of the same '
        'architecture built for that input size (see the tool\'s '
        'docstring); time overhead = ours / upstream - 1 (the median time '
        'per image). Memory: '
        'peak tensor memory allocated during one forward (CUDA '
        'allocator statistics; on CPU replayed from profiler '
        'allocation events).', '', HEADER
    ] + [format_row(r) for r in rows] + [
        '', f'Load average at the end of the run: {load_average()} '
        '(on a shared machine, other jobs add noise of several percent to '
        'the CPU timings; the comparison is interleaved to share it fairly).',
        ''
    ]
    return '\n'.join(lines)


def parse_size(text: str) -> Tuple[int, int]:
    h, _, w = text.partition('x')
    return int(h), int(w or h)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        default=['openclip', 'biomedclip', 'surgeryclip',
                 'surgeryclip-dualpath', 'conceptclip'])
    parser.add_argument(
        '--sizes',
        nargs='+',
        type=parse_size,
        default=[(224, 224), (800, 1344)])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument(
        '--iters',
        type=int,
        nargs='+',
        default=[5],
        help='timed runs per variant; one value, or one '
        'per --sizes entry')
    parser.add_argument('--warmup', type=int, nargs='+', default=[1],
                        help='untimed runs first; one value, or one per '
                        '--sizes entry')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument(
        '--tiny', action='store_true', help='tiny test configs (smoke test)')
    parser.add_argument(
        '--write',
        type=Path,
        default=None,
        help='update this markdown file (e.g. '
        'docs/benchmarks.md)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(HEADER)
    rows = run(args)
    if args.write:
        from tools.benchmark_ms_deform_attn import write_section
        write_section(args.write, SECTION, section_text(rows, args))
        print(f'updated {args.write}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
