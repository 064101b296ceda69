"""Benchmark ``plugins.ops.ms_deform_attn`` against the PyTorch reference
and mmcv's op.

Shapes (batch 2, 8 heads of 32 channels, 4 points, 4 levels):

* ``a`` Deformable-DETR decoder: 300 queries on levels 64x64 .. 8x8;
* ``b`` encoder: every position of those levels queries them (5,440);
* ``c`` Deformable-DETR encoder at 800x1333: levels 100x167, 50x84, 25x42,
  13x21, 22,223 queries (GPU only: the CPU reference would take minutes);
* ``d`` projector: the 4 levels of a Swin-B at 512x512 (128x128 .. 16x16),
  256 queries.

Each implementation runs forward and forward+backward; the runs of the
implementations are interleaved (so background load hits all of them
alike) and the median is reported, with the peak memory of one
forward+backward (CPU: the rise of the process's peak RSS, reset through
``/proc/self/clear_refs``; GPU: ``torch.cuda.max_memory_allocated``).

Examples::

    python tools/benchmark_ms_deform_attn.py                 # CPU: a, b, d
    python tools/benchmark_ms_deform_attn.py --device cuda   # GPU: a-d, +bf16
    python tools/benchmark_ms_deform_attn.py --write docs/benchmarks.md
"""
import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from plugins.ops import ms_deform_attn, ms_deform_attn_reference  # noqa: E402
from plugins.ops.ms_deform_attn import loader  # noqa: E402

# One section per device in docs/benchmarks.md, e.g. '... op (CPU)'.
SECTION = '## Multi-scale deformable attention op ({})'

SHAPES = {
    'a': ('decoder', 300, [(64, 64), (32, 32), (16, 16), (8, 8)]),
    'b': ('encoder', None, [(64, 64), (32, 32), (16, 16), (8, 8)]),
    'c': ('DETR encoder 800x1333', None,
          [(100, 167), (50, 84), (25, 42), (13, 21)]),
    'd': ('projector (Swin-B 512)', 256,
          [(128, 128), (64, 64), (32, 32), (16, 16)]),
}
BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4

# Acceptance targets on CPU (fwd+bwd speed-up over the reference).
CPU_TARGETS = {'a': 8.0, 'b': 5.0}


def make_inputs(shape_key, device, dtype, seed=0):
    _, num_queries, levels = SHAPES[shape_key]
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S = int(sizes.sum())
    Lq = S if num_queries is None else num_queries
    L = len(levels)
    value = torch.rand(BATCH, S, HEADS, CHANNELS, generator=g)
    loc = torch.rand(BATCH, Lq, HEADS, L, POINTS, 2, generator=g)
    attn = torch.rand(BATCH, Lq, HEADS, L, POINTS, generator=g)
    attn /= attn.sum((-1, -2), keepdim=True)
    return (value.to(device, dtype), shapes.to(device), starts.to(device),
            loc.to(device, dtype), attn.to(device, dtype)), S, Lq


def implementations(device, with_mmcv=True):
    impls = {'ours': ms_deform_attn, 'reference': ms_deform_attn_reference}
    if not with_mmcv:
        return impls
    try:
        from mmcv.ops import multi_scale_deform_attn as mmcv_msda
    except Exception:  # mmcv missing or built without ops
        return impls
    if device == 'cpu':
        # mmcv's CPU path is its grid_sample implementation.
        impls['mmcv'] = (lambda v, s, i, l, a:
                         mmcv_msda.multi_scale_deformable_attn_pytorch(v, s, l, a))
    elif hasattr(mmcv_msda, 'MultiScaleDeformableAttnFunction'):
        try:
            from mmcv.utils import ext_loader
            ext_loader.load_ext('_ext', ['ms_deform_attn_forward'])
            impls['mmcv'] = (lambda v, s, i, l, a:
                             mmcv_msda.MultiScaleDeformableAttnFunction.apply(
                                 v, s, i, l, a, 64))
        except Exception:  # mmcv compiled without its CUDA kernel
            pass
    return impls


class PeakMemory:
    """Peak memory added by the code run inside the ``with`` block, in MB."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def _status(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        gc.collect()
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # Hand memory freed by earlier runs back to the OS first, or the
            # run would reuse it without raising the RSS.
            libc = ctypes.CDLL(ctypes.util.find_library('c'))
            libc.malloc_trim(0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # reset the peak RSS to the current RSS
            self.base = self._status('VmRSS')
        return self

    def __exit__(self, *exc):
        if self.device == 'cuda':
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._status('VmHWM')
        self.mb = max(0, peak - self.base) / 2**20


def run_once(fn, args, backward):
    if not backward:
        with torch.no_grad():
            return fn(*args)
    value, shapes, starts, loc, attn = args
    leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    out.backward(torch.ones_like(out))
    return out


def bench_shape(shape_key, device, dtype, impls, reps, warmup=1):
    """{impl: dict(fwd=ms, fwd_bwd=ms, peak_mb=MB)} for one shape."""
    args, S, Lq = make_inputs(shape_key, device, dtype)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    results = {name: {} for name in impls}
    for mode, backward in (('fwd', False), ('fwd_bwd', True)):
        times = {name: [] for name in impls}
        for _ in range(warmup):
            for fn in impls.values():
                run_once(fn, args, backward)
        for _ in range(reps):
            for name, fn in impls.items():
                sync()
                t0 = time.perf_counter()
                run_once(fn, args, backward)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
        for name in impls:
            results[name][mode] = statistics.median(times[name])
    for name, fn in impls.items():
        for backward, key in ((False, 'peak_fwd_mb'), (True, 'peak_mb')):
            with PeakMemory(device) as mem:
                run_once(fn, args, backward)
            results[name][key] = mem.mb
    return results, S, Lq


def machine_description(device):
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
    text = (f'{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch '
            f'threads, load average {load} (other jobs share the machine)')
    if device == 'cuda':
        text = f'{torch.cuda.get_device_name()} (host: {text})'
    return text


def markdown_table(rows, device):
    lines = ['| shape | S / Lq | dtype | impl | fwd ms | fwd+bwd ms | '
             'peak MB fwd | peak MB fwd+bwd | fwd+bwd speed-up | peak vs ref |',
             '|---|---|---|---|---:|---:|---:|---:|---:|---:|']
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['S']} / {row['Lq']} | {row['dtype']} | "
            f"{row['impl']} | {row['fwd']:.2f} | {row['fwd_bwd']:.2f} | "
            f"{row['peak_fwd_mb']:.1f} | {row['peak_mb']:.1f} | "
            f"{row['speedup']} | {row['mem_ratio']} |")
    return '\n'.join(lines)


def write_section(path, heading, body):
    """Replace (or append) our own section ``heading`` of ``path``, leaving
    the others as they are."""
    text = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
    start = text.find(heading + '\n')
    if start < 0:
        text = text.rstrip('\n') + '\n\n' + body.rstrip('\n') + '\n'
    else:
        end = text.find('\n## ', start + len(heading))
        end = len(text) if end < 0 else end + 1
        text = text[:start] + body.rstrip('\n') + '\n' + (
            '\n' + text[end:] if end < len(text) else '')
    with open(path, 'w') as f:
        f.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--shapes', default=None,
                        help='comma-separated keys of a,b,c,d (default: a,b,d '
                             'on CPU, a,b,c,d on CUDA)')
    parser.add_argument('--reps', type=int, default=9)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--no-mmcv', action='store_true')
    parser.add_argument('--write', metavar='MARKDOWN', default=None,
                        help='write the table into this file (own section)')
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no GPU visible')
    keys = (args.shapes.split(',') if args.shapes
            else (['a', 'b', 'd'] if device == 'cpu' else ['a', 'b', 'c', 'd']))
    if not loader.load(device):
        print(f'warning: no compiled {device} kernel ({loader.status(device)}); '
              f'"ours" is the reference', file=sys.stderr)
    dtypes = [torch.float32] + ([torch.bfloat16] if device == 'cuda' else [])
    rows, verdicts = [], []
    for key in keys:
        name = SHAPES[key][0]
        for dtype in dtypes:
            impls = implementations(device, with_mmcv=not args.no_mmcv)
            if dtype != torch.float32:
                impls.pop('mmcv', None)  # mmcv has no bf16 kernel
            reps = args.reps
            print(f'[{key}] {name} {str(dtype)[6:]}: '
                  f'{", ".join(impls)} x{reps} ...', flush=True)
            results, S, Lq = bench_shape(key, device, dtype, impls, reps)
            ref = results['reference']
            for impl, r in results.items():
                speedup = ref['fwd_bwd'] / r['fwd_bwd']
                ratio = r['peak_mb'] / ref['peak_mb'] if ref['peak_mb'] else float('nan')
                rows.append(dict(shape=f'{key}: {name}', S=S, Lq=Lq,
                                 dtype=str(dtype)[6:], impl=impl,
                                 speedup=f'{speedup:.1f}x',
                                 mem_ratio=f'{ratio:.2f}', **r))
                print(f'    {impl:>9}: fwd {r["fwd"]:9.2f} ms  fwd+bwd '
                      f'{r["fwd_bwd"]:9.2f} ms  peak {r["peak_mb"]:8.1f} MB  '
                      f'({speedup:.1f}x, {ratio:.2f} of ref memory)')
            if device == 'cpu' and key in CPU_TARGETS:
                ours = results['ours']
                speedup = ref['fwd_bwd'] / ours['fwd_bwd']
                ratio = ours['peak_mb'] / ref['peak_mb']
                ok = speedup >= CPU_TARGETS[key] and ratio <= 1 / 3
                verdicts.append(f'{key} ({name}): fwd+bwd {speedup:.1f}x '
                                f'(target {CPU_TARGETS[key]:.0f}x), peak memory '
                                f'{ratio:.2f} of the reference (target <= 0.33): '
                                f'{"met" if ok else "NOT met"}')
    for v in verdicts:
        print('acceptance:', v)

    if args.write:
        command = 'python tools/benchmark_ms_deform_attn.py ' + ' '.join(
            argv if argv is not None else sys.argv[1:])
        cuda = f', CUDA {torch.version.cuda}' if device == 'cuda' else ''
        heading = SECTION.format('CPU' if device == 'cpu' else 'CUDA')
        body = '\n'.join([
            heading, '',
            f'`plugins.ops.ms_deform_attn` ("ours", {loader.status(device).get("source", "?")} '
            f'build) vs the PyTorch `grid_sample` reference and mmcv '
            f'{"(its CPU path is the same grid_sample algorithm)" if device == "cpu" else "(its CUDA kernel)"}.'
            f' Batch {BATCH}, {HEADS} heads x {CHANNELS} channels, {POINTS} '
            f'points, 4 levels; uniformly random locations; median of '
            f'{args.reps} interleaved runs; peak = extra memory of one run '
            f'({"rise of peak RSS" if device == "cpu" else "max_memory_allocated"}); '
            f'speed-up and memory relative to the reference.', '',
            f'- machine: {machine_description(device)}',
            f'- torch {torch.__version__}{cuda}',
            f'- command: `{command.strip()}`', '',
            markdown_table(rows, device), ''] +
            ([f'- {v}' for v in verdicts] + [''] if verdicts else []))
        write_section(args.write, heading, body)
        print(f'wrote {args.write} ({heading[3:]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
