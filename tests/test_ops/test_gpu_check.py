"""``make gpu-check`` (tools/gpu_check.py) on a machine without a GPU: the
CPU-side preparation runs, then it stops with a clear message and status 2."""
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='a GPU is visible: `make gpu-check` runs for real')
def test_without_a_gpu_prepares_then_fails_loudly(repo_root, tmp_path):
    cache = tmp_path / 'cache'
    (cache / 'peers').mkdir(parents=True)
    sdist = cache / 'peers' / 'torch_ms_deform_attn-0.1.1.tar.gz'
    sdist.write_bytes(b'not a real archive: only copied')
    carry = tmp_path / 'carry'
    env = dict(os.environ, PLUGINS_CACHE_DIR=str(cache), CUDA_VISIBLE_DEVICES='')
    out = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--no-write', '--carry-dir',
         str(carry)], cwd=repo_root, env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert 'no CUDA GPU visible' in out.stdout
    assert 'nothing was checked on a GPU' in out.stdout
    assert (carry / sdist.name).read_bytes() == sdist.read_bytes()


def test_make_target_exists(repo_root):
    makefile = (repo_root / 'Makefile').read_text()
    assert '\ngpu-check:' in makefile and 'tools/gpu_check.sh' in makefile
