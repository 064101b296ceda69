"""The CUDA-emulation sweep (cuda_emu_cases.py) built with AddressSanitizer
and UBSan, and the planted removed level guard that only ASan sees.

Marked ``slow`` (part of ``make test``, outside ``pytest -m cuda_emu``): two
more builds of about 45 s of one core each, compiled in parallel, then
subprocesses that preload the ASan runtime (a sanitizer error ends the
process).  By hand: ``python tests/test_ops/cuda_emu_cases.py --sanitize``.
"""
import concurrent.futures
import os
import re
import subprocess
import sys

import pytest

from plugins.ops.ms_deform_attn import cuda_emu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_emu_cases  # noqa: E402

pytestmark = pytest.mark.slow
SCRIPT = os.path.abspath(cuda_emu_cases.__file__)


@pytest.fixture(scope='module')
def builds(tmp_path_factory):
    """The clean and the planted-bug ASan builds, compiled at once."""
    csrc = cuda_emu_cases.planted_sources(str(tmp_path_factory.mktemp('planted')))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(cuda_emu.compile_library, sanitize=True),
                pool.submit(cuda_emu.compile_library, csrc, True)]
        for job in jobs:
            job.result()
    return dict(planted_csrc=csrc)


def _run(args, timeout=600):
    done = subprocess.run([sys.executable, SCRIPT, '--sanitize'] + args,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    return done.returncode, done.stdout + done.stderr


def test_sanitizers_clean(builds):
    """The whole sweep under ASan + UBSan (alignment of the 16-byte packs,
    integer overflow, out-of-bounds loads and atomics, also for the bad
    level) on the unchanged .cu."""
    rc, out = _run([])
    assert rc == 0, out[-6000:]
    assert re.search(r'ASan\+UBSan\): 0 failed; 65 of 65 compiled', out), out[-3000:]


def test_planted_level_guard_removed_is_an_asan_error(builds):
    """Without its level guard the forward reads past value for a level
    that does not fit: ASan stops it, naming the kernel."""
    rc, out = _run(['--csrc', builds['planted_csrc'], '--plant', 'no_level_guard',
                    '--only', 'float32-D8-atomic-bad-levels'])
    assert rc != 0
    assert 'ERROR: AddressSanitizer: heap-buffer-overflow' in out, out[-3000:]
    assert 'forward_kernel<float, float, float, 4>' in out, out[-3000:]
