"""The sweep of the CUDA-emulation tests (test_cuda_emu.py): every kernel
instantiation of ms_deform_attn_cuda.cu, run by the CPU emulator
(plugins/ops/ms_deform_attn/cuda_emu.py), against the float64 reference.

Also a script, for the runs that need a process of their own (an ASan
build must be loaded by a Python with the ASan runtime preloaded, and a
sanitizer error ends the process)::

    python tests/test_ops/cuda_emu_cases.py [--sanitize] [--csrc DIR]
        [--plant NAME[,NAME...]] [--only REGEX]

re-executes itself under ``LD_PRELOAD`` when ``--sanitize`` is given, prints
one line per failed case and a summary, and exits 1 on any failure.
"""
import argparse
import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from msda_tolerance import assert_close_to_reference  # noqa: E402

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
# (value dtype, locations/weights dtype): every pair the kernels take.
DTYPES = ((F64, F64), (F32, F32), (F16, F16), (F16, F32), (BF16, BF16),
          (BF16, F32))
# Per dtype these give both channel widths (16-byte packs or one channel)
# and both reductions (warp shuffles when D / C is a power of two <= 32,
# atomics otherwise): e.g. float32: 1 (C=1, shuffles), 7 (C=1, atomics),
# 8 and 32 (C=4, shuffles), 48 and 256 (C=4, atomics); float16: 256 is
# C=8 with 32-lane shuffles.
CHANNELS = (1, 7, 8, 32, 48, 256)
# H != W on every level, so that an H/W mix-up changes the numbers.
LEVELS = ((6, 4), (3, 5), (2, 1))
SPECIALS = ('misaligned', 'non-contiguous', 'edges', 'bad-levels',
            'empty-level', 'N=0', 'Lq=0', 'P=0')


CU = os.path.join('cuda', 'ms_deform_attn_cuda.cu')
# Planted bugs: (exact text of the .cu, replacement).  Each is on only when
# CUDA_EMU_PLANT names it, so one build serves them all.
PLANTS = {
    # The forward reads a level that does not fit in value.
    'no_level_guard': (
        '      if (!level_ok(H64, W64, start, geo.S)) continue;',
        '      if (!level_ok(H64, W64, start, geo.S) && '
        '!cuda_emu_planted("no_level_guard")) continue;'),
    # d/dloc_x scaled by H instead of W.
    'h_for_w': (
        '      g_x *= a * static_cast<acc_t>(W);',
        '      g_x *= a * static_cast<acc_t>(cuda_emu_planted("h_for_w") ? H : W);'),
    # Threads past the end leave before the shuffles.
    'divergent_shuffle': (
        '      if constexpr (kWarpReduce) {\n',
        '      if constexpr (kWarpReduce) {\n'
        '        if (!active && cuda_emu_planted("divergent_shuffle")) return;\n'),
    # Shuffle with a lane outside the warp.
    'bad_lane': (
        'for (int offset = geo.G / 2;',
        'for (int offset = cuda_emu_planted("bad_lane") ? 32 : geo.G / 2;'),
    # grad_weights all zero (what the old absolute tolerance let through).
    'zero_grad_weights': (
        'sink.set_attn(gattn + j, g_attn);',
        'sink.set_attn(gattn + j, cuda_emu_planted("zero_grad_weights") '
        '? acc_t(0) : g_attn);'),
    # More threads per block than a GPU runs.
    'big_block': (
        'MSDA_LAUNCH(kernel, blocks, kThreads, stream)(',
        'MSDA_LAUNCH(kernel, blocks, cuda_emu_planted("big_block") ? 2048 : '
        'kThreads, stream)('),
}


def planted_sources(folder):
    """A copy of csrc/ with every planted bug (switched off) in the .cu."""
    csrc = os.path.join(folder, 'csrc')
    from plugins.ops.ms_deform_attn import build_config
    shutil.copytree(build_config.CSRC, csrc)
    path = os.path.join(csrc, CU)
    with open(path) as f:
        text = f.read()
    for name, (old, new) in PLANTS.items():
        assert old in text, f'planted bug {name}: {old!r} not in the .cu'
        text = text.replace(old, new)
    with open(path, 'w') as f:
        f.write(text)
    return csrc


@dataclasses.dataclass(frozen=True)
class Case:
    value_dtype: torch.dtype
    coord_dtype: torch.dtype
    channels: int
    deterministic: bool
    layout: str = 'plain'

    @property
    def id(self):
        name = str(self.value_dtype)[6:]
        if self.coord_dtype != self.value_dtype:
            name += '+' + str(self.coord_dtype)[6:]
        sink = 'fixed' if self.deterministic else 'atomic'
        return f'{name}-D{self.channels}-{sink}-{self.layout}'


def cases():
    """Every case of the sweep."""
    out = [Case(v, c, d, det) for v, c in DTYPES for d in CHANNELS
           for det in (False, True)]
    for det in (False, True):
        for layout in ('misaligned', 'non-contiguous'):
            for v, c in ((F32, F32), (BF16, F32), (F64, F64)):
                for d in (8, 32, 256):
                    out.append(Case(v, c, d, det, layout))
        for layout in SPECIALS[2:]:
            for d in (7, 8):
                out.append(Case(F32, F32, d, det, layout))
    return out


def load_make_inputs():
    """conftest.make_inputs, imported by path (works outside pytest)."""
    spec = importlib.util.spec_from_file_location(
        'test_ops_conftest', os.path.join(HERE, 'conftest.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_inputs


@contextlib.contextmanager
def deterministic(flag):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(flag)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def reference_grads(value, shapes, starts, loc, attn, grad_out):
    """float64 reference output and gradients (grid_sample autograd)."""
    from plugins.ops import ms_deform_attn_reference
    leaves = [t.detach().double().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_reference(leaves[0], shapes, starts, leaves[1], leaves[2])
    if out.numel() == 0 or leaves[0].numel() == 0:
        return out.detach(), [torch.zeros_like(t) for t in leaves]
    return out.detach(), list(torch.autograd.grad(out, leaves, grad_out.double()))


def misaligned_copy(t):
    """t's values in a storage that starts one element past an aligned one
    (no 16-byte vector loads possible)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = flat[1:].view(t.shape).copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


def non_contiguous(t):
    """Same values, a transposed memory layout."""
    if t.dim() < 2:
        return t
    return t.transpose(0, -1).contiguous().transpose(0, -1)


def _inputs(case, make_inputs):
    sizes = dict(N=2, Lq=5, M=2, D=case.channels, P=2, shapes=LEVELS)
    if case.layout == 'empty-level':
        sizes['shapes'] = ((6, 4), (0, 5), (2, 1))
    for key in ('N', 'Lq', 'P'):
        if case.layout == f'{key}=0':
            sizes[key] = 0
    args = list(make_inputs(**sizes, loc_range=(-0.1, 1.1), seed=case.channels))
    args[0] = args[0].to(case.value_dtype)
    args[3] = args[3].to(case.coord_dtype)
    args[4] = args[4].to(case.coord_dtype)
    g = torch.Generator().manual_seed(1 + case.channels)
    N, Lq, M, D = args[0].shape[0], args[3].shape[1], args[0].shape[2], case.channels
    grad_out = torch.rand(N, Lq, M * D, generator=g, dtype=F64).to(case.value_dtype)
    return args, grad_out


def run_case(emu, case, make_inputs):
    """Runs one case; returns (failures, names of the kernels launched)."""
    (value, shapes, starts, loc, attn), grad_out = _inputs(case, make_inputs)
    failures = []
    ref_loc, ref_attn, ref_shapes, ref_starts = loc, attn, shapes, starts
    kernel_shapes = shapes
    if case.layout == 'edges':
        loc = loc.clone()
        loc[0, 0] = -5.0                   # far outside: no gradient
        loc[0, 1] = 0.0                    # the top-left corner
        loc[0, 2] = 1.0                    # the bottom-right corner
        loc[1, 0, 0, 0, 0] = torch.tensor([0.5 / 4, 0.5 / 6])  # a pixel centre
        loc[1, 1] = 7.0
        loc[1, 2] = float('nan')           # outside, on every backend
        ref_loc = loc
    elif case.layout == 'bad-levels':
        # Level 1 reaches past S (24 + 60 > 41): the kernels skip it.
        kernel_shapes = shapes.clone()
        kernel_shapes[1] = torch.tensor([30, 2])
        ref_attn = attn.clone()
        ref_attn[:, :, :, 1] = 0
    ref_out, ref = reference_grads(value, ref_shapes, ref_starts, ref_loc,
                                   ref_attn, grad_out)
    if case.layout == 'bad-levels':
        ref[2][:, :, :, 1] = 0          # a skipped level has no gradient
    k_value, k_loc, k_attn, k_grad_out = value, loc, attn, grad_out
    if case.layout == 'misaligned':
        k_value, k_grad_out = misaligned_copy(value), misaligned_copy(grad_out)
    elif case.layout == 'non-contiguous':
        k_value, k_loc, k_attn, k_grad_out = (non_contiguous(t) for t in
                                              (value, loc, attn, grad_out))
    emu.launches()  # forget earlier launches
    flags = []

    def call(op, *args):
        # Each call's level-error flag, taken before the next call (which
        # would raise for it).
        result = op(*args)
        flags.append(emu.level_errors())
        return result

    with deterministic(case.deterministic):
        out = call(emu.forward, k_value, kernel_shapes, starts, k_loc, k_attn)
        grads = call(emu.backward, k_grad_out, k_value, kernel_shapes, starts,
                     k_loc, k_attn)
        again = call(emu.backward, k_grad_out, k_value, kernel_shapes, starts,
                     k_loc, k_attn)
        aligned = None
        if case.layout == 'misaligned':
            aligned = emu.backward(grad_out, value, kernel_shapes, starts, loc, attn)
    launched = emu.launches()
    bad = case.layout == 'bad-levels'
    empty = value.numel() == 0 or loc.numel() == 0
    if flags != [int(bad and not empty)] * len(flags):
        failures.append(f'level error flags {flags}')
    expected_dtypes = (case.value_dtype, case.value_dtype, case.coord_dtype,
                       case.coord_dtype)
    got_dtypes = (out.dtype,) + tuple(g.dtype for g in grads)
    if got_dtypes != expected_dtypes:
        failures.append(f'dtypes {got_dtypes} != {expected_dtypes}')
    try:
        assert_close_to_reference(out, grads, ref_out, ref, case.value_dtype)
    except AssertionError as e:
        failures.append(str(e))
    if case.deterministic:
        # Bit-identical run after run, and whatever the memory layout.
        if not all(torch.equal(a, b) for a, b in zip(grads, again)):
            failures.append('deterministic backward differs between two runs')
        if aligned is not None and not all(
                torch.equal(a, b) for a, b in zip(grads, aligned)):
            diff = max(float((a.double() - b.double()).abs().max())
                       for a, b in zip(grads, aligned))
            failures.append(f'deterministic backward depends on alignment '
                            f'(max difference {diff:.3g})')
    if case.layout == 'edges':
        if grads[1][0, 0].any() or grads[2][0, 0].any():
            failures.append('a point far outside got a gradient')
        if not torch.isfinite(grads[1]).all():
            failures.append('a NaN location gave a non-finite gradient')
    return failures, launched


def sweep(emu, make_inputs, only=None, out=sys.stdout):
    """Runs every case; returns (failed case ids, kernels launched)."""
    failed, launched = [], set()
    for case in cases():
        if only and not re.search(only, case.id):
            continue
        try:
            failures, names = run_case(emu, case, make_inputs)
        except RuntimeError as e:  # a launch the emulator refused
            failures, names = [f'error: {e}'.splitlines()[0]], emu.launches()
        launched.update(names)
        if failures:
            failed.append(case.id)
            print(f'FAIL {case.id}: {"; ".join(failures)}', file=out)
    return failed, launched


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sanitize', action='store_true')
    parser.add_argument('--csrc', default=None)
    parser.add_argument('--plant', default=None,
                        help='CUDA_EMU_PLANT: the planted bug(s) to switch on, '
                        'comma-separated (one sweep each)')
    parser.add_argument('--only', default=None,
                        help='regular expression: the case ids to run')
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from plugins.ops.ms_deform_attn import build_config, cuda_emu
    if args.sanitize and 'libasan' not in os.environ.get('LD_PRELOAD', ''):
        # (The ASan runtime must be loaded first: restart under it.)
        import subprocess
        return subprocess.call([sys.executable, os.path.abspath(__file__)]
                               + sys.argv[1:], env=cuda_emu.sanitizer_env())
    emu = cuda_emu.build(args.csrc or build_config.CSRC, sanitize=args.sanitize)
    failed, launched = [], set()
    for plant in (args.plant or '').split(','):
        os.environ['CUDA_EMU_PLANT'] = plant  # read by the kernels' getenv
        print(f'PLANT {plant or "none"}', flush=True)
        f, names = sweep(emu, load_make_inputs(), args.only)
        failed += f
        launched |= names
    compiled = emu.kernels()
    print(f'cuda_emu sweep{" (ASan+UBSan)" if args.sanitize else ""}: '
          f'{len(failed)} failed; {len(launched & compiled)} of '
          f'{len(compiled)} compiled kernel instantiations launched')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
