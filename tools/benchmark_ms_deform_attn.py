"""Benchmark ``plugins.ops.ms_deform_attn`` against the PyTorch reference,
mmcv's op and torch-ms-deform-attn's kernels.

Shapes (batch 2, 8 heads of 32 channels, 4 points, 4 levels):

* ``a`` Deformable-DETR decoder: 300 queries on levels 64x64 .. 8x8;
* ``b`` encoder: every position of those levels queries them (5,440);
* ``c`` Deformable-DETR encoder at 800x1333: levels 100x167, 50x84, 25x42,
  13x21, 22,223 queries (GPU only: the CPU reference would take minutes);
* ``d`` projector: the 4 levels of a Swin-B at 512x512 (128x128 .. 16x16),
  256 queries.

Peers, each a row where it can be imported (otherwise skipped with the
reason printed and written): mmcv (CPU: its grid_sample path; GPU: its CUDA
kernel) and ``torch-ms-deform-attn`` (PyPI; a benchmark peer, never a
dependency of plugins), looked up as an installed package or in
``--peer-dir`` (default ``~/.cache/plugins/peers/<cpu|cuda>-torch<version>``,
where ``tools/gpu_check.sh`` and the command in docs/benchmarks.md build it
from its sdist).  dtypes: float32 (CPU and GPU), bfloat16 and mixed (a
bfloat16 value with float32 locations and weights, autocast's hand-over;
torch-ms-deform-attn rejects that mix outside autocast, so it has no mixed
row) on the GPU.  On the GPU the achieved memory bandwidth of ours is
reported against the device's peak (a lower bound of the bytes moved: the
inputs, the output, and 4 corner rows per sampling point, or all of value
if fewer; for the backward also grad_output, the float32 grad_value buffer
written, read back and converted, and the gradients of locations and
weights).

Each implementation runs forward and forward+backward; the runs of the
implementations are interleaved (so background load hits all of them
alike) and the median is reported (the forward+backward's interquartile
range too, as its spread), with the peak memory of one
forward+backward (CPU: the rise of the process's peak RSS, reset through
``/proc/self/clear_refs``; GPU: ``torch.cuda.max_memory_allocated``).

Examples::

    python tools/benchmark_ms_deform_attn.py                 # CPU: a, b, d
    python tools/benchmark_ms_deform_attn.py --device cuda   # GPU: a-d, +bf16
    python tools/benchmark_ms_deform_attn.py --write docs/benchmarks.md
    python tools/benchmark_ms_deform_attn.py --threads 16 --shapes c \
        --impls ours --reps 3                                  # CPU memory
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
# ... and over torch-ms-deform-attn's CPU kernel (issue 18: 2x; issue 23:
# 3x at the projector shape).
CPU_PEER_TARGETS = {'a': 2.0, 'b': 2.0, 'c': 2.0, 'd': 3.0}
PEER = 'torch-ms-deform-attn'
PEER_SDIST = 'torch-ms-deform-attn'  # PyPI name

# dtype rows: (value dtype, locations/weights dtype).
DTYPES = {'float32': (torch.float32, torch.float32),
          'bfloat16': (torch.bfloat16, torch.bfloat16),
          'mixed': (torch.bfloat16, torch.float32)}


def default_peer_dir(device):
    root = os.environ.get('PLUGINS_CACHE_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'plugins')
    return os.path.join(root, 'peers', f'{device}-torch{torch.__version__}')


def load_peer(device, peer_dir):
    """(ms_deform_attn of torch-ms-deform-attn, None) or (None, reason)."""
    try:
        import torch_ms_deform_attn  # noqa: F401  (installed)
    except ImportError:
        if not os.path.isdir(peer_dir):
            return None, (f'not installed and no build at {peer_dir} (see '
                          f'docs/benchmarks.md for the command)')
        sys.path.insert(0, peer_dir)
        try:
            import torch_ms_deform_attn  # noqa: F401,F811
        except Exception as e:  # built against another torch, say
            return None, f'import from {peer_dir} failed: {e}'
    from torch_ms_deform_attn import ms_deform_attn as peer
    try:
        # Fails when the package was built without this device's kernel.
        args, _, _ = make_inputs('a', device, torch.float32, small=True)
        peer(*args)
    except Exception as e:
        return None, f'its {device} kernel does not run: {e}'
    return peer, None


def make_inputs(shape_key, device, dtype, seed=0, coord_dtype=None,
                small=False):
    _, num_queries, levels = SHAPES[shape_key]
    if small:
        num_queries, levels = 3, [(4, 4), (2, 2)]
    coord_dtype = coord_dtype or dtype
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
            loc.to(device, coord_dtype), attn.to(device, coord_dtype)), S, Lq


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


def moved_bytes(args, backward):
    """Lower bound of the bytes one call moves (see the module docstring)."""
    value, shapes, starts, loc, attn = args
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    item = value.element_size()
    rows = min(4 * N * Lq * M * L * P, N * S * M)  # value rows of D
    gathered = rows * D * item
    small = loc.numel() * loc.element_size() + attn.numel() * attn.element_size()
    out = N * Lq * M * D * item
    total = gathered + small + out
    if backward:
        acc = 8 if value.dtype == torch.float64 else 4
        # grad_output, the accumulation buffer (zeroed, then read once for
        # the conversion when value is not float32), grad_value, and the
        # gradients of locations and weights.
        conversion = value.numel() * (acc + item) if acc != item else 0
        total += out + value.numel() * acc + conversion + small + gathered
    return total


def peak_bandwidth():
    """The device's peak memory bandwidth in bytes/s (DDR: 2 transfers per
    memory clock), or None."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock = getattr(props, 'memory_clock_rate', 0)  # kHz
    width = getattr(props, 'memory_bus_width', 0)   # bits
    return 2 * clock * 1e3 * width / 8 if clock and width else None


def bench_shape(shape_key, device, dtype, impls, reps, warmup=1,
                coord_dtype=None):
    """{impl: dict(fwd=ms, fwd_bwd=ms, peak_mb=MB)} for one shape."""
    args, S, Lq = make_inputs(shape_key, device, dtype, coord_dtype=coord_dtype)
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
            if len(times[name]) > 1:
                q = statistics.quantiles(times[name], n=4)
                results[name][f'{mode}_iqr'] = (q[0], q[2])
            else:
                results[name][f'{mode}_iqr'] = (times[name][0],) * 2
    for name, fn in impls.items():
        for backward, key in ((False, 'peak_fwd_mb'), (True, 'peak_mb')):
            with PeakMemory(device) as mem:
                run_once(fn, args, backward)
            results[name][key] = mem.mb
    if device == 'cuda' and 'ours' in results:
        peak = peak_bandwidth()
        for mode, backward in (('fwd', False), ('fwd_bwd', True)):
            rate = moved_bytes(args, backward) / (results['ours'][mode] * 1e-3)
            results['ours'][f'{mode}_gbs'] = rate / 1e9
            results['ours'][f'{mode}_peak'] = rate / peak if peak else float('nan')
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
    head = ('| shape | S / Lq | dtype | impl | fwd ms | fwd+bwd ms | '
            'fwd+bwd IQR ms | peak MB fwd | peak MB fwd+bwd | '
            'fwd+bwd speed-up | peak vs ref |')
    rule = '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|'
    if device == 'cuda':
        head += ' fwd GB/s (of peak) | fwd+bwd GB/s (of peak) |'
        rule += '---:|---:|'
    lines = [head, rule]
    for row in rows:
        line = (f"| {row['shape']} | {row['S']} / {row['Lq']} | {row['dtype']} | "
                f"{row['impl']} | {row['fwd']:.2f} | {row['fwd_bwd']:.2f} | "
                f"{row['fwd_bwd_iqr'][0]:.2f}-{row['fwd_bwd_iqr'][1]:.2f} | "
                f"{row['peak_fwd_mb']:.1f} | {row['peak_mb']:.1f} | "
                f"{row['speedup']} | {row['mem_ratio']} |")
        if device == 'cuda':
            for mode in ('fwd', 'fwd_bwd'):
                if f'{mode}_gbs' in row:
                    line += f" {row[f'{mode}_gbs']:.0f} ({row[f'{mode}_peak']:.0%}) |"
                else:
                    line += ' |'
        lines.append(line)
    return '\n'.join(lines)


def peer_version():
    try:
        import torch_ms_deform_attn
        return torch_ms_deform_attn.__version__
    except Exception:
        return '(not available)'


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
    parser.add_argument('--deterministic', action='store_true',
                        help='run under torch.use_deterministic_algorithms'
                             '(True) (CUDA: the fixed-point backward); '
                             'written to its own section')
    parser.add_argument('--no-peer', action='store_true',
                        help=f'skip {PEER}')
    parser.add_argument('--peer-dir', default=None,
                        help=f'folder holding a build of {PEER} (default: '
                             f'~/.cache/plugins/peers/<device>-torch<version>)')
    parser.add_argument('--impls', default=None,
                        help='comma-separated subset of ours,reference,mmcv,'
                             f'{PEER}')
    parser.add_argument('--dtypes', default=None,
                        help='comma-separated of float32,bfloat16,mixed '
                             '(default: float32 on CPU, all three on CUDA)')
    parser.add_argument('--write', metavar='MARKDOWN', default=None,
                        help='write the table into this file (own section)')
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    device = args.device
    if device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no GPU visible')
    keys = (args.shapes.split(',') if args.shapes
            else (['a', 'b', 'd'] if device == 'cpu' else ['a', 'b', 'c', 'd']))
    if not loader.load(device):
        print(f'warning: no compiled {device} kernel ({loader.status(device)}); '
              f'"ours" is the reference', file=sys.stderr)
    dtype_names = (args.dtypes.split(',') if args.dtypes else
                   ['float32'] + (['bfloat16', 'mixed'] if device == 'cuda' else []))
    peer, peer_reason = (None, 'disabled (--no-peer)') if args.no_peer else \
        load_peer(device, args.peer_dir or default_peer_dir(device))
    if peer is None:
        print(f'{PEER}: skipped: {peer_reason}', file=sys.stderr)
    wanted = args.impls.split(',') if args.impls else None
    rows, verdicts, notes = [], [], []
    if peer is None:
        notes.append(f'{PEER}: no row ({peer_reason})')
    for key in keys:
        name = SHAPES[key][0]
        for dtype_name in dtype_names:
            dtype, coord_dtype = DTYPES[dtype_name]
            impls = implementations(device, with_mmcv=not args.no_mmcv)
            if dtype != torch.float32:
                impls.pop('mmcv', None)  # mmcv has no bf16 kernel
            if peer is not None and dtype == coord_dtype:
                impls[PEER] = peer
            if wanted:
                impls = {k: v for k, v in impls.items() if k in wanted}
            reps = args.reps
            print(f'[{key}] {name} {dtype_name}: '
                  f'{", ".join(impls)} x{reps} ...', flush=True)
            results, S, Lq = bench_shape(key, device, dtype, impls, reps,
                                         coord_dtype=coord_dtype)
            ref = results.get('reference')
            for impl, r in results.items():
                speedup = ref['fwd_bwd'] / r['fwd_bwd'] if ref else float('nan')
                ratio = (r['peak_mb'] / ref['peak_mb'] if ref and ref['peak_mb']
                         else float('nan'))
                rows.append(dict(shape=f'{key}: {name}', S=S, Lq=Lq,
                                 dtype=dtype_name, impl=impl,
                                 speedup=f'{speedup:.1f}x',
                                 mem_ratio=f'{ratio:.2f}', **r))
                extra = (f'  {r["fwd_gbs"]:.0f} / {r["fwd_bwd_gbs"]:.0f} GB/s'
                         if 'fwd_gbs' in r else '')
                lo, hi = r['fwd_bwd_iqr']
                print(f'    {impl:>20}: fwd {r["fwd"]:9.2f} ms  fwd+bwd '
                      f'{r["fwd_bwd"]:9.2f} ms (IQR {lo:.2f}-{hi:.2f})  '
                      f'peak {r["peak_mb"]:8.1f} MB  '
                      f'({speedup:.1f}x, {ratio:.2f} of ref memory){extra}')
            if PEER in results and 'ours' in results:
                over = results[PEER]['fwd_bwd'] / results['ours']['fwd_bwd']
                fwd_over = results[PEER]['fwd'] / results['ours']['fwd']
                line = (f'{key} ({name}, {dtype_name}): fwd {fwd_over:.1f}x, '
                        f'fwd+bwd {over:.1f}x faster than {PEER}')
                if device == 'cpu':
                    target = CPU_PEER_TARGETS[key]
                    line += (f' (target {target:.0f}x): '
                             f'{"met" if over >= target else "NOT met"}')
                verdicts.append(line)
            if device == 'cpu' and key in CPU_TARGETS and ref and 'ours' in results:
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
        heading = SECTION.format(('CPU' if device == 'cpu' else 'CUDA') +
                                 (', deterministic' if args.deterministic else ''))
        body = '\n'.join([
            heading, '',
            f'`plugins.ops.ms_deform_attn` ("ours", {loader.status(device).get("source", "?")} '
            f'build) vs the PyTorch `grid_sample` reference, mmcv '
            f'{"(its CPU path is the same grid_sample algorithm)" if device == "cpu" else "(its CUDA kernel)"}'
            f' and {PEER} {peer_version()} (its {device.upper()} kernel, built from its PyPI sdist).'
            f' Batch {BATCH}, {HEADS} heads x {CHANNELS} channels, {POINTS} '
            f'points, 4 levels; uniformly random locations; median of '
            f'{args.reps} interleaved runs; peak = extra memory of one run '
            f'({"rise of peak RSS" if device == "cpu" else "max_memory_allocated"}); '
            f'speed-up and memory relative to the reference.', '',
            f'- machine: {machine_description(device)}',
            f'- torch {torch.__version__}{cuda}',
            f'- command: `{command.strip()}`',
            f'- {PEER} (a benchmark peer only, not a dependency), fetched and '
            f'built outside the repository: `pip download --no-deps '
            f'--no-binary :all: --no-build-isolation {PEER_SDIST} -d '
            f'~/.cache/plugins/peers`, then `{"FORCE_CPU=1 " if device == "cpu" else "FORCE_CUDA=1 "}'
            f'pip install --no-deps --no-build-isolation --target '
            f'~/.cache/plugins/peers/{device}-torch{torch.__version__} '
            f'~/.cache/plugins/peers/torch_ms_deform_attn-*.tar.gz`'
            f'{" (tools/gpu_check.py does this)" if device == "cuda" else ""}', '',
            markdown_table(rows, device), ''] +
            ([f'- {v}' for v in verdicts + notes] + [''] if verdicts + notes else []))
        write_section(args.write, heading, body)
        print(f'wrote {args.write} ({heading[3:]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
