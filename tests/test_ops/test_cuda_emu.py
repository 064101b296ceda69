"""The CUDA kernels (csrc/cuda/ms_deform_attn_cuda.cu, unchanged) run by the
CPU emulator (plugins/ops/ms_deform_attn/cuda_emu.py): every instantiation
against the float64 reference, and planted bugs that the harness must
report.  ``pytest -m cuda_emu`` runs them alone; the AddressSanitizer+UBSan
runs are in test_cuda_emu_sanitize.py (marked ``slow``: two more builds).

Two libraries are compiled in parallel when the module starts (cached by
source text): the plain build and the plain build of a copy of the sources
with planted bugs (cuda_emu_cases.PLANTS), each switched on at run time by
CUDA_EMU_PLANT.
"""
import concurrent.futures
import io
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from plugins.ops.ms_deform_attn import build_config, cuda_emu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_emu_cases  # noqa: E402
from cuda_emu_cases import CU, cases, planted_sources, run_case, sweep  # noqa: E402

pytestmark = pytest.mark.cuda_emu


@pytest.fixture(scope='module')
def builds(tmp_path_factory):
    """Starts both compiles at once; values are futures of paths."""
    csrc = planted_sources(str(tmp_path_factory.mktemp('planted')))
    pool = concurrent.futures.ThreadPoolExecutor(2)
    jobs = dict(plain=pool.submit(cuda_emu.compile_library),
                planted=pool.submit(cuda_emu.compile_library, csrc))
    yield dict(jobs, planted_csrc=csrc)
    pool.shutdown(wait=True)


@pytest.fixture(scope='module')
def emu(builds):
    builds['plain'].result()
    return cuda_emu.build()


@pytest.fixture(scope='module')
def make_inputs():
    return cuda_emu_cases.load_make_inputs()


LAUNCHED = {}  # case id -> kernel instantiations it launched


@pytest.mark.parametrize('case', cases(), ids=lambda c: c.id)
def test_kernel_matches_reference(emu, make_inputs, case):
    """One instantiation (dtypes, channels per thread, reduction, gradient
    sink) on one layout, against the float64 reference; deterministic
    cases also bit-identical run after run and aligned vs misaligned."""
    failures, launched = run_case(emu, case, make_inputs)
    LAUNCHED[case.id] = launched
    assert not failures, f'{case.id}: ' + '; '.join(failures)


def test_every_instantiation_launched(emu, make_inputs, capsys):
    """Every kernel compiled into the library ran in the sweep above (the
    list goes to the terminal, past pytest's capture: the instantiations
    these tests cover)."""
    for case in cases():
        if case.id not in LAUNCHED:  # e.g. under -k
            LAUNCHED[case.id] = run_case(emu, case, make_inputs)[1]
    launched = set().union(*LAUNCHED.values())
    compiled = emu.kernels()
    # 12 forward + 48 backward + 4 from_fixed + 1 take_level_errors.
    assert len(compiled) == 65, sorted(compiled)
    assert compiled <= launched, sorted(compiled - launched)
    lines = [f'cuda_emu: {len(compiled)} kernel instantiations of {CU} ran '
             f'and matched the reference:']
    lines += ['  ' + re.sub(r'^void |plugins::msda::\(anonymous namespace\)::',
                            '', name).split('(')[0] for name in sorted(compiled)]
    with capsys.disabled():
        print('\n' + '\n'.join(lines))


def test_bad_level_raises_at_the_next_call(emu, make_inputs):
    """A GPU cannot check the levels without a sync: the kernels skip a bad
    level, and the next call on the device raises (once)."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    bad = torch.tensor([[6, 4], [30, 2]])  # 24 + 60 > S = 30
    assert emu.level_errors() == 0
    emu.forward(value, bad, starts, loc, attn)  # skips level 1, no error
    with pytest.raises(RuntimeError, match='an earlier call got spatial_shapes'):
        emu.forward(value, shapes, starts, loc, attn)
    emu.forward(value, shapes, starts, loc, attn)  # reported once
    emu.backward(torch.ones(2, 3, 16), value, bad, starts, loc, attn)
    assert emu.level_errors() == 1  # taken here: the next call runs
    assert emu.level_errors() == 0
    emu.forward(value, shapes, starts, loc, attn)


def test_launch_of_empty_problem_is_skipped(emu, make_inputs):
    """A zero-block launch is a GPU error: empty problems must not launch."""
    value, shapes, starts, loc, attn = make_inputs(N=0, dtype=torch.float32)
    emu.launches()
    assert emu.forward(value, shapes, starts, loc, attn).shape == (0, 3, 16)
    assert emu.launches() == []


def test_planted_bugs_are_reported(builds, make_inputs, monkeypatch):
    """Each planted bug fails the sweep cases that exercise it, with the
    harness's message; with no bug switched on the same build passes."""
    builds['planted'].result()
    planted = cuda_emu.build(builds['planted_csrc'])
    # D=1: one thread per (query, head) (G=1); D=32: G=4..16 lanes shuffle.
    only = r'-D(1|32)-atomic-plain'
    reports = {}
    for plant in ('', 'h_for_w', 'divergent_shuffle', 'bad_lane', 'big_block',
                  'zero_grad_weights'):
        monkeypatch.setenv('CUDA_EMU_PLANT', plant)
        out = io.StringIO()
        failed, _ = sweep(planted, make_inputs, only, out)
        reports[plant] = out.getvalue()
        assert len(failed) == reports[plant].count('FAIL')
    assert reports[''] == ''
    expected = {
        'h_for_w': r'grad locations error',
        'divergent_shuffle': r'lanes [\d,]+ exited without taking part in the '
                             r'full-mask __shfl_xor_sync',
        'bad_lane': r'reads lane \d+, which did not take part',
        'big_block': r'2048 threads per block \(a GPU allows 1 to 1024\)',
        'zero_grad_weights': r'grad weights error 1 \(relative\)',
    }
    for plant, message in expected.items():
        assert re.search(message, reports[plant]), (plant, reports[plant])
    # Every case sees the wrong formulas and the bad launches; a divergent
    # shuffle shows only where a warp holds threads past the end and
    # threads before it (here the 16-bit types at D=32).
    for plant in ('h_for_w', 'bad_lane', 'big_block', 'zero_grad_weights'):
        assert reports[plant].count('FAIL') == 12, (plant, reports[plant])
    assert reports['divergent_shuffle'].count('FAIL') == 4, reports['divergent_shuffle']


def test_zero_grad_weights_passed_the_old_tolerance(make_inputs):
    """Why test_ms_deform_attn_cuda.py's tolerance changed: at D=1 every
    grad_weights is below 0.01, the old absolute tolerance
    ``1e-2 * max(|ref|, 1)``, so an all-zero grad_weights passed it; the
    planted zero_grad_weights bug fails the relative one
    (test_planted_bugs_are_reported)."""
    for dtype in (torch.bfloat16, torch.float16):
        case = cuda_emu_cases.Case(dtype, dtype, 1, False)
        (value, shapes, starts, loc, attn), grad_out = cuda_emu_cases._inputs(
            case, make_inputs)
        _, ref = cuda_emu_cases.reference_grads(value, shapes, starts, loc,
                                                attn, grad_out)
        old_tolerance = 1e-2 * ref[2].abs().max().clamp(min=1)
        assert ref[2].abs().max() < old_tolerance  # zeros would have passed


# bilinear.h alone, under UBSan: the offsets of a point in the last row of
# a level with H * W close to 2^31 - 1.
_BILINEAR_PROBE = r'''
#include "bilinear.h"
#include <cstdio>
int main() {
  plugins::msda::Bilinear<double> b;
  const int H = 46341, W = 46340;  // H * W = 2147441940 < 2^31 - 1 < H * W + W
  const bool any = plugins::msda::bilinear_coefficients<double>(
      0.99999, (H - 0.25) / H, H, W, b);
  std::printf("%d %d %d %d %d\n", any, b.valid[2], b.offset[0], b.offset[1], b.offset[2]);
  return 0;
}
'''


def _probe_bilinear(csrc, tmp_path):
    src = tmp_path / 'probe.cpp'
    src.write_text(_BILINEAR_PROBE)
    exe = tmp_path / 'probe'
    cxx = os.environ.get('CXX', 'c++')
    subprocess.run([cxx, '-std=c++20', '-O1', '-fsanitize=undefined',
                    '-fno-sanitize-recover=undefined', f'-I{csrc}', str(src),
                    '-o', str(exe)], check=True, capture_output=True)
    return subprocess.run([str(exe)], capture_output=True, text=True)


def test_bilinear_offsets_do_not_overflow(tmp_path):
    """Defect: offset[2] = offset[0] + W was computed before the validity
    check and overflowed int32 in the last row of a level with
    H * W + W > 2^31 - 1 (which level_size_ok allows).  The old lines,
    planted back into a copy, are caught by UBSan."""
    done = _probe_bilinear(build_config.CSRC, tmp_path)
    assert done.returncode == 0, done.stderr
    any_inside, valid2, off0, off1, off2 = map(int, done.stdout.split())
    # The point is in the last row and column: only corner 0 is inside.
    assert any_inside and not valid2
    assert (off0, off1, off2) == (46341 * 46340 - 1, 0, 0)
    old = tmp_path / 'old'
    shutil.copytree(build_config.CSRC, old)
    text = (old / 'bilinear.h').read_text()
    start = text.index('  // Offsets of the corners inside the map only')
    end = text.index('  b.w[0] = hy * hx;')
    (old / 'bilinear.h').write_text(
        text[:start] + '  b.offset[0] = y0 * W + x0;\n'
        '  b.offset[1] = b.offset[0] + 1;\n  b.offset[2] = b.offset[0] + W;\n'
        '  b.offset[3] = b.offset[2] + 1;\n' + text[end:])
    done = _probe_bilinear(str(old), tmp_path)
    assert done.returncode != 0 and 'signed integer overflow' in done.stderr, done.stderr


def test_edited_source_is_rebuilt(tmp_path):
    """The cache key is the sources' text: an edited .cu (even a comment)
    gets its own build."""
    csrc = tmp_path / 'csrc'
    shutil.copytree(build_config.CSRC, csrc)
    before = cuda_emu.cache_key(str(csrc))
    with open(csrc / CU, 'a') as f:
        f.write('// edited\n')
    assert cuda_emu.cache_key(str(csrc)) != before
    assert cuda_emu.cache_key(str(csrc), sanitize=True) != cuda_emu.cache_key(str(csrc))
