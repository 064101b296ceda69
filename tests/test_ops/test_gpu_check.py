"""``make gpu-check`` (tools/gpu_check.py) without a GPU: it must stop at
once with status 2 and a clear message, touching neither the network nor a
compiler; and its plan of tiers (what a lent GPU machine would run) is
checked step by step."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tools import gpu_check

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(),
                            reason='a GPU is visible: `make gpu-check` runs '
                                   'for real')


@NO_GPU
def test_without_a_gpu_exits_2_at_once(repo_root, tmp_path):
    out = tmp_path / 'out'
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OUT=str(out),
               PLUGINS_CACHE_DIR=str(tmp_path / 'cache'))
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--tier',
         'build,tests,bench,detector'], cwd=repo_root, env=env,
        capture_output=True, text=True, timeout=120)
    seconds = time.time() - t0
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'no CUDA GPU visible' in done.stdout
    assert 'nothing was checked on a GPU' in done.stdout
    assert 'pip' not in done.stdout + done.stderr
    # At once: not even torch is imported when no device can be visible
    # (was: up to 300 s of `pip download` first).
    assert seconds < 30, seconds
    result = json.loads((out / 'gpu_check.json').read_text())
    assert result['exit_status'] == 2 and result['steps'] == []
    assert not (tmp_path / 'cache').exists()  # nothing fetched or built


@NO_GPU
@pytest.mark.parametrize('asked', ['devices', 'torch'])
def test_without_a_gpu_runs_no_command(monkeypatch, tmp_path, asked):
    """In process: no subprocess at all (no `pip download`, no build), even
    with no peer sdist anywhere and every tier asked for; whether the lack
    of a GPU is seen without torch (no device nodes) or by torch."""
    def refuse(*args, **kwargs):
        raise AssertionError(f'gpu-check ran {args[0] if args else kwargs}')

    if asked == 'torch':
        monkeypatch.setattr(gpu_check, 'no_gpu_without_torch', lambda: None)
    monkeypatch.setattr(subprocess, 'run', refuse)
    monkeypatch.setattr(subprocess, 'Popen', refuse)
    monkeypatch.setenv('PLUGINS_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('OUT', str(tmp_path / 'out'))
    status = gpu_check.main(['--tier', 'build,tests,bench,detector',
                             '--carry-dir', str(tmp_path / 'carry')])
    assert status == 2
    assert (tmp_path / 'out' / 'gpu_check.json').is_file()


def test_tiers_parse_in_run_order():
    assert gpu_check.parse_tiers('tests, build') == ['build', 'tests']
    assert gpu_check.DEFAULT_TIERS == ('build', 'tests')
    with pytest.raises(ValueError, match=r"unknown tier\(s\) \['bnch'\]"):
        gpu_check.parse_tiers('build,bnch')


def _plan(tmp_path, tiers, sdist=None, missing_host=(), missing_window=()):
    out = str(tmp_path / 'out')
    return out, gpu_check.plan(
        gpu_check.parse_tiers(tiers), out, '9.0', sdist, list(missing_host),
        list(missing_window), str(tmp_path / 'peer'),
        os.path.join(out, 'benchmarks.md'))


def _commands(steps):
    return [' '.join(s.cmd) for s in steps if s.cmd]


def test_default_plan_builds_and_tests_only(tmp_path):
    out, steps = _plan(tmp_path, ','.join(gpu_check.DEFAULT_TIERS),
                       missing_host=['mmdet'])
    run = [s for s in steps if s.skip is None]
    assert [s.tier for s in run] == ['build', 'build', 'tests']
    assert 'plugins.ops.build --cpu-only' in _commands(run)[1]
    tests = run[2]
    assert '-m not cuda_emu and not slow' in ' '.join(tests.cmd)
    assert tests.wait_for == gpu_check.BUILT and tests.needs == gpu_check.BUILT
    assert all(s.log.startswith(out) for s in run)  # every log under $OUT
    # Within the budget by construction: the build steps run side by side.
    assert sum(gpu_check.STEP_TIMEOUT[k] for k in ('build', 'tests')) <= 600
    skipped = [s for s in steps if s.skip]
    assert [s.name for s in skipped] == [gpu_check.MMDET_OP_TEST]
    assert not any('benchmark' in c or 'pip' in c for c in _commands(steps))


def test_bench_plan_without_sdist_skips_the_peer_offline(tmp_path):
    out, steps = _plan(tmp_path, 'bench')
    peer = [s for s in steps if s.name == gpu_check.PEER_BUILD][0]
    assert peer.cmd is None and 'sdist not carried' in peer.skip
    commands = _commands(steps)
    assert not any('pip' in c for c in commands)  # no network, no build
    op = [c for c in commands if 'benchmark_ms_deform_attn' in c]
    assert all('--no-peer' in c and f'--write {out}' in c for c in op)
    window = [c for c in commands if 'benchmark_window_attention' in c]
    assert window and window[0].endswith('--device cuda')
    # the bench tier needs the op: it builds it first (a cache hit after a
    # build tier on the same machine)
    assert [s.tier for s in steps[1:3]] == ['build (needed)'] * 2


def test_bench_plan_builds_a_carried_sdist_offline(tmp_path):
    sdist = str(tmp_path / 'torch_ms_deform_attn-0.1.1.tar.gz')
    _, steps = _plan(tmp_path, 'bench', sdist=sdist,
                     missing_window=['open_clip'])
    peer = [s for s in steps if s.name == gpu_check.PEER_BUILD][0]
    assert peer.background and '--no-index' in peer.cmd and sdist in peer.cmd
    assert 'download' not in ' '.join(peer.cmd)
    op = [s for s in steps if s.name == 'op benchmark (CUDA)'][0]
    assert gpu_check.PEER_BUILD in op.wait_for and '--peer-dir' in op.cmd
    window = [s for s in steps if s.name.startswith('window attention')][0]
    assert window.cmd is None and 'open_clip not importable' in window.skip


def test_detector_plan_skips_without_the_host(tmp_path):
    _, steps = _plan(tmp_path, 'detector', missing_host=['mmdet', 'mmcv'])
    detector = [s for s in steps if s.tier == 'detector']
    assert len(detector) == 1 and 'mmdet, mmcv not importable' in \
        detector[0].skip


def test_runner_records_and_skips_what_needs_a_failed_step(tmp_path):
    py = sys.executable
    Step = gpu_check.Step
    steps = [
        Step('build', 'slow', [py, '-c', 'import time; time.sleep(0.3)'], 60,
             str(tmp_path / 'slow.log'), background=True),
        Step('build', 'broken', [py, '-c', 'raise SystemExit(3)'], 60,
             str(tmp_path / 'broken.log')),
        Step('tests', 'tests', [py, '-c', 'print("1 passed in 0.1s")'], 60,
             str(tmp_path / 'tests.log'), wait_for=('slow',),
             needs=('slow', 'broken')),
        Step('tests', 'ok', [py, '-c', 'print("3 passed in 0.2s")'], 60,
             str(tmp_path / 'ok.log'), needs=('slow',)),
        Step('bench', 'hangs', [py, '-c', 'import time; time.sleep(30)'], 1,
             str(tmp_path / 'hangs.log')),
    ]
    runner = gpu_check.Runner(dict(os.environ))
    runner.run(steps)
    rows = {r['step']: r for r in runner.rows}
    assert rows['slow']['result'] == 'passed'
    assert rows['broken']['result'] == 'FAILED'
    assert rows['tests']['result'] == 'skipped'
    assert 'needs broken' in rows['tests']['note']
    assert rows['ok']['result'] == 'passed'
    assert rows['ok']['note'] == '3 passed in 0.2s'
    assert rows['hangs']['result'] == 'FAILED'
    assert 'timed out after 1 s' in rows['hangs']['note']
    text = gpu_check.write_results(str(tmp_path / 'res'), dict(summary='s'),
                                   runner.rows)
    assert '| tests | ok | passed | 0 | 3 passed in 0.2s |' in text
    saved = json.loads((tmp_path / 'res' / 'gpu_check.json').read_text())
    assert len(saved['steps']) == 5


def test_prepare_only_copies_a_cached_sdist_to_carry(repo_root, tmp_path):
    cache = tmp_path / 'cache'
    (cache / 'peers').mkdir(parents=True)
    sdist = cache / 'peers' / 'torch_ms_deform_attn-0.1.1.tar.gz'
    sdist.write_bytes(b'not a real archive: only copied')
    carry = tmp_path / 'carry'
    env = dict(os.environ, PLUGINS_CACHE_DIR=str(cache))
    done = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--prepare-only',
         '--carry-dir', str(carry)], cwd=repo_root, env=env,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (carry / sdist.name).read_bytes() == sdist.read_bytes()


def test_make_target_takes_tiers(repo_root):
    makefile = (repo_root / 'Makefile').read_text()
    assert '\ngpu-check:' in makefile and 'tools/gpu_check.sh' in makefile
    assert '--tier $(TIER)' in makefile


def test_a_gpu_run_writes_everything_to_out(monkeypatch, tmp_path, repo_root):
    """``main`` on a (faked) GPU with two stand-in steps: the JSON, the
    markdown rows, the logs and the benchmarks.md copy go to $OUT, the
    tree's docs/benchmarks.md is left alone, a failed step gives status 1."""
    py = sys.executable
    planned = {}

    def fake_plan(tiers, out, arch, sdist, missing_host, missing_window,
                  peer_dir, write_md):
        planned.update(tiers=tiers, arch=arch, sdist=sdist, write_md=write_md)
        return [gpu_check.Step('build', 'ok', [py, '-c', 'print("built")'],
                               60, os.path.join(out, 'gpu_check_ok.log')),
                gpu_check.Step('tests', 'fails', [py, '-c', 'exit(1)'], 60,
                               os.path.join(out, 'gpu_check_fails.log'))]

    monkeypatch.setattr(gpu_check, 'no_gpu_without_torch', lambda: None)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i=0: (9, 0))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i=0: 'Fake H100')
    monkeypatch.setattr(gpu_check, 'plan', fake_plan)
    monkeypatch.setenv('PLUGINS_CACHE_DIR', str(tmp_path / 'cache'))
    out = tmp_path / 'out'
    monkeypatch.setenv('OUT', str(out))
    docs = (repo_root / 'docs' / 'benchmarks.md').read_text()
    status = gpu_check.main(['--carry-dir', str(tmp_path / 'carry')])
    assert status == 1
    assert planned == dict(tiers=['build', 'tests'], arch='9.0', sdist=None,
                           write_md=str(out / 'benchmarks.md'))
    result = json.loads((out / 'gpu_check.json').read_text())
    assert result['device'] == 'Fake H100' and result['exit_status'] == 1
    assert [(r['step'], r['result']) for r in result['steps']] == [
        ('ok', 'passed'), ('fails', 'FAILED')]
    assert (out / 'gpu_check_ok.log').read_text() == 'built\n'
    assert '| build | ok | passed |' in (out / 'gpu_check.md').read_text()
    copy = (out / 'benchmarks.md').read_text()
    assert '## GPU check' in copy and 'Fake H100' in copy
    assert (repo_root / 'docs' / 'benchmarks.md').read_text() == docs
