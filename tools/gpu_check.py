"""``make gpu-check``: what a short session on a lent GPU machine runs, in tiers.

A lent machine gives one command at most 10 minutes (and a session 15
minutes in all), has torch, nvcc, ninja and pytest but maybe no mmdet,
mmcv, mmengine or open_clip, and no network.  So the check comes in tiers,
chosen with ``--tier`` (comma-separated, run in this order):

* ``build``: compiles the op's CPU and CUDA kernels (in parallel) for the
  local GPU's architecture only;
* ``tests``: ``tests/test_ops`` on the GPU (the CUDA tests included; the
  CPU emulation of the CUDA kernels, markers ``cuda_emu`` and ``slow``
  (its ASan/UBSan sweep), is deselected: the real GPU runs the kernels),
  plus the mmdet drop-in's op test where mmdet, mmcv and mmengine import;
* ``bench``: ``tools/benchmark_ms_deform_attn.py --device cuda`` (ours
  against mmcv and torch-ms-deform-attn where they can be had), the cost
  of the deterministic backward, and
  ``tools/benchmark_window_attention.py --device cuda`` (global vs windowed
  attention memory; skipped with the reason where its imports are
  missing);
* ``detector``: the DINO demo, 50 iterations with bfloat16 AMP (skipped
  with the reason without mmdet, mmcv and mmengine).

The default, ``build,tests``, is designed to finish well inside 5 minutes
on one H100 with 16 CPU cores (estimate: build 1.5-2.5 min, the CPU and
CUDA kernels compiling side by side; tests 1-2 min); each step has its own
time-out (``STEP_TIMEOUT``), and a tier that needs the op builds it first
(a cache hit when ``build`` ran before on the same machine).

It never touches the network: torch-ms-deform-attn's sdist (a benchmark
peer, never a dependency) is used when it is carried in the tree
(``build/peers/``) or in ``$PLUGINS_CACHE_DIR/peers``, built offline
(``pip install --no-index``), and otherwise its rows are skipped with the
reason.  ``--prepare-only``, on a machine with a package registry, fetches
it with ``pip download`` into ``build/peers/`` to be carried.

Results: one JSON record per step (``gpu_check.json``), the markdown rows
(``gpu_check.md``) and one log per step go to ``--out``, by default
``$OUT`` when it is set (the folder a lent machine sends back), else
``build/gpu_check/``.  The benchmark tables and the summary are written
into ``docs/benchmarks.md`` (sections "Multi-scale deformable attention op
(CUDA)" and "GPU check"), or, when the results go to ``$OUT``/``--out``,
into a copy of it there (``benchmarks.md``) to be merged by hand.

Exit status: 0 when every step passed or was skipped with a reason, 1 when
one failed, 2 at once (nothing built, fetched or run) when no CUDA GPU is
visible.

Usage: ``make gpu-check [GPU_CHECK_ARGS='--tier build,tests,bench']`` or
``python tools/gpu_check.py [--tier ...] [--out DIR] [--no-write]``.
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIERS = ('build', 'tests', 'bench', 'detector')
DEFAULT_TIERS = ('build', 'tests')
PEER_PYPI = 'torch-ms-deform-attn'
PEER_GLOB = 'torch_ms_deform_attn-*.tar.gz'
CARRY_DIR = os.path.join(ROOT, 'build', 'peers')
DEMO_CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'
SECTION = '## GPU check'
BENCHMARKS_MD = os.path.join(ROOT, 'docs', 'benchmarks.md')
MMDET_OP_TEST = ('tests/test_mmdet_custom/test_models/test_layers/'
                 'test_ms_deform_attention.py')
HOST_MODULES = ('mmdet', 'mmcv', 'mmengine')
WINDOW_MODULES = ('open_clip', 'timm') + HOST_MODULES
BUILD_CUDA = 'op CUDA kernel (local arch)'
BUILD_CPU = 'op CPU kernel'
BUILT = (BUILD_CUDA, BUILD_CPU)
PEER_BUILD = f'{PEER_PYPI} build (offline, from the sdist)'
#: Seconds each step may take before it is killed and counted as failed.
STEP_TIMEOUT = dict(build=300, tests=300, peer=240, bench_op=300,
                    bench_deterministic=120, bench_window=240, toy_data=120,
                    detector=400)


def log(msg: str) -> None:
    print(f'[gpu-check] {msg}', flush=True)


def parse_tiers(text: str) -> List[str]:
    """``'tests,build'`` -> ``['build', 'tests']`` (run order); unknown names
    raise ValueError naming them and the known ones."""
    names = [t.strip() for t in text.split(',') if t.strip()]
    unknown = [t for t in names if t not in TIERS]
    if unknown or not names:
        raise ValueError(f'unknown tier(s) {unknown or [text]}; choose from '
                         f'{",".join(TIERS)} (default {",".join(DEFAULT_TIERS)})')
    return [t for t in TIERS if t in names]


def out_dir(arg: Optional[str]) -> str:
    """Where logs and results go: ``--out``, else ``$OUT``, else
    ``build/gpu_check``."""
    return os.path.abspath(arg or os.environ.get('OUT') or
                           os.path.join(ROOT, 'build', 'gpu_check'))


def peer_cache_dir() -> str:
    root = os.environ.get('PLUGINS_CACHE_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'plugins')
    return os.path.join(root, 'peers')


def find_sdist(carry_dir: str = CARRY_DIR) -> Optional[str]:
    """The peer's sdist carried in the tree or cached; never fetches."""
    for folder in (carry_dir, peer_cache_dir()):
        found = sorted(glob.glob(os.path.join(folder, PEER_GLOB)))
        if found:
            return found[-1]
    return None


def prepare(carry_dir: str = CARRY_DIR) -> int:
    """``--prepare-only``: put the peer's sdist into ``carry_dir`` (fetched
    with ``pip download`` when it is in neither place: the only network use
    of this tool, on the machine that prepares the carry)."""
    sdist = find_sdist(carry_dir)
    if sdist is None:
        os.makedirs(peer_cache_dir(), exist_ok=True)
        log(f'fetching the {PEER_PYPI} sdist into {peer_cache_dir()} ...')
        # --no-build-isolation: pip prepares its metadata with the torch and
        # setuptools already installed instead of downloading them.
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
               '--no-binary', ':all:', '--no-build-isolation', PEER_PYPI,
               '-d', peer_cache_dir()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                log(f'pip download failed: {done.stderr.strip()[-300:]}')
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f'pip download failed: {e}')
        sdist = find_sdist(carry_dir)
    if sdist is None:
        log(f'{PEER_PYPI} sdist unavailable: make gpu-check will skip its '
            f'benchmark rows')
        return 1
    os.makedirs(carry_dir, exist_ok=True)
    target = os.path.join(carry_dir, os.path.basename(sdist))
    if os.path.abspath(sdist) != os.path.abspath(target):
        shutil.copy2(sdist, target)
    log(f'peer sdist: {target} (carry {os.path.relpath(carry_dir, ROOT)} to '
        f'the GPU machine)')
    return 0


def missing_modules(names) -> List[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


class Step(NamedTuple):
    """One row of the results: a command to run, or a skip with a reason."""
    tier: str
    name: str
    cmd: Optional[List[str]]
    timeout: int
    log: str
    skip: Optional[str] = None   # the reason, when the step is not run
    background: bool = False     # started at once, finished when waited for
    wait_for: tuple = ()         # background steps to finish first
    needs: tuple = ()            # steps that must have passed (else skip)


def plan(tiers: List[str], out: str, arch: str, sdist: Optional[str],
         missing_host: List[str], missing_window: List[str],
         peer_dir: str, write_md: Optional[str]) -> List[Step]:
    """The steps of ``tiers``, in order (pure: runs nothing).

    Args:
        tiers: from :func:`parse_tiers`.
        out: folder of the logs.
        arch: ``'9.0'``-style compute capability of the local GPU.
        sdist: the peer's carried sdist, or None.
        missing_host: which of mmdet/mmcv/mmengine do not import.
        missing_window: which imports of the window-attention benchmark are
            missing.
        peer_dir: where the peer is built (``pip install --target``).
        write_md: the markdown file the benchmarks write into, or None.
    """
    py = sys.executable
    steps: List[Step] = []

    def logf(name):
        return os.path.join(out, f'gpu_check_{name}.log')

    needs_op = any(t in tiers for t in ('tests', 'bench', 'detector'))
    if 'build' in tiers or needs_op:
        tier = 'build' if 'build' in tiers else 'build (needed)'
        if 'bench' in tiers:
            # The peer compiles in the background while ours builds.
            if sdist is None:
                steps.append(Step('bench', PEER_BUILD, None, 0,
                                  '', skip=f'{PEER_PYPI} sdist not carried '
                                  f'(build/peers/ or {peer_cache_dir()}): no '
                                  f'peer rows; `python tools/gpu_check.py '
                                  f'--prepare-only` fetches it where a '
                                  f'registry is reachable'))
            elif os.path.isdir(os.path.join(peer_dir, 'torch_ms_deform_attn')):
                steps.append(Step('bench', PEER_BUILD, None, 0, '',
                                  skip=f'already built in {peer_dir}'))
            else:
                steps.append(Step(
                    'bench', PEER_BUILD,
                    [py, '-m', 'pip', 'install', '--no-deps',
                     '--no-build-isolation', '--no-index', '--no-cache-dir',
                     '--target', peer_dir, sdist],
                    STEP_TIMEOUT['peer'], logf('peer'), background=True))
        # The CUDA kernel compiles alongside the CPU one (each is one large
        # translation unit, so ninja alone would run them one after the
        # other).
        steps.append(Step(tier, BUILD_CUDA,
                          [py, '-c', 'from plugins.ops.ms_deform_attn import '
                           'loader; print(loader.compile_library("cuda"))'],
                          STEP_TIMEOUT['build'], logf('build_cuda'),
                          background=True))
        steps.append(Step(tier, BUILD_CPU,
                          [py, '-m', 'plugins.ops.build', '--cpu-only'],
                          STEP_TIMEOUT['build'], logf('build_cpu')))
    if 'tests' in tiers:
        # The mmdet drop-in's test needs mmcv (and must fail, not skip, where
        # it is installed): it runs only where the host imports.
        extra = [] if missing_host else [MMDET_OP_TEST]
        steps.append(Step('tests', 'tests/test_ops' + (
            ' + mmdet drop-in' if extra else ''),
            [py, '-m', 'pytest', 'tests/test_ops'] + extra +
            ['-m', 'not cuda_emu and not slow', '-q', '-rs', '-p',
             'no:cacheprovider',
             '--durations=10'],
            STEP_TIMEOUT['tests'], logf('tests'), wait_for=BUILT,
            needs=BUILT))
        if missing_host:
            steps.append(Step('tests', MMDET_OP_TEST, None, 0, '',
                              skip=f'{", ".join(missing_host)} not '
                              f'importable here'))
    if 'bench' in tiers:
        write = ['--write', write_md] if write_md else []
        peer = ['--no-peer'] if sdist is None else ['--peer-dir', peer_dir]
        steps.append(Step('bench', 'op benchmark (CUDA)',
                          [py, 'tools/benchmark_ms_deform_attn.py', '--device',
                           'cuda', '--reps', '20'] + peer + write,
                          STEP_TIMEOUT['bench_op'], logf('bench_op'),
                          wait_for=BUILT + (PEER_BUILD,), needs=BUILT))
        # The cost of the deterministic backward (issue 18, item 4).
        steps.append(Step('bench', 'op benchmark (CUDA, deterministic)',
                          [py, 'tools/benchmark_ms_deform_attn.py', '--device',
                           'cuda', '--reps', '20', '--deterministic',
                           '--shapes', 'a,c', '--dtypes', 'float32,mixed',
                           '--impls', 'ours', '--no-mmcv', '--no-peer'] + write,
                          STEP_TIMEOUT['bench_deterministic'],
                          logf('bench_deterministic'), wait_for=BUILT,
                          needs=BUILT))
        name = 'window attention memory (ViT-B/16, 1024 px, CUDA)'
        if missing_window:
            steps.append(Step('bench', name, None, 0, '',
                              skip=f'{", ".join(missing_window)} not '
                              f'importable here (the benchmark builds '
                              f'OpenCLIPBackbone)'))
        else:
            steps.append(Step('bench', name,
                              [py, 'tools/benchmark_window_attention.py',
                               '--device', 'cuda'],
                              STEP_TIMEOUT['bench_window'],
                              logf('bench_window')))
    if 'detector' in tiers:
        name = 'DINO demo 50 iters, bf16 AMP'
        if missing_host:
            steps.append(Step('detector', name, None, 0, '',
                              skip=f'{", ".join(missing_host)} not '
                              f'importable here'))
        else:
            toy = os.path.join(ROOT, 'data', 'toy', 'annotations',
                               'instances_train.json')
            if not os.path.isfile(toy):
                steps.append(Step('detector', 'toy data',
                                  [py, 'tools/make_toy_dataset.py', '--out',
                                   'data/toy'], STEP_TIMEOUT['toy_data'],
                                  logf('toy_data')))
            steps.append(Step(
                'detector', name,
                [py, 'tools/train.py', DEMO_CONFIG, '--amp', '--work-dir',
                 os.path.join(out, 'gpu_check_dino'), '--cfg-options',
                 'train_cfg.max_iters=50', 'train_cfg.val_interval=50',
                 'default_hooks.checkpoint.interval=50',
                 'optim_wrapper.dtype=bfloat16'],
                STEP_TIMEOUT['detector'], logf('detector'), wait_for=BUILT,
                needs=BUILT))
    return steps


class Runner:
    """Runs the planned steps; background ones are started at once."""

    def __init__(self, env: dict):
        self.env = env
        self.procs = {}   # name -> (Popen, log file, start time, step)
        self.rows = []

    def _start(self, step: Step):
        log('$ ' + ' '.join(step.cmd) + f'  (log: {step.log})')
        f = open(step.log, 'w')
        proc = subprocess.Popen(step.cmd, cwd=ROOT, env=self.env, stdout=f,
                                stderr=subprocess.STDOUT, text=True)
        self.procs[step.name] = (proc, f, time.time(), step)

    def _finish(self, name: str) -> None:
        proc, f, t0, step = self.procs.pop(name)
        left = max(1.0, step.timeout - (time.time() - t0))
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        f.close()
        self._record(step, rc, time.time() - t0)

    def _record(self, step: Step, rc, seconds: float) -> None:
        note = _summary(step.log)
        if rc is None:
            note = f'timed out after {step.timeout} s; ' + note
        ok = rc == 0
        if not ok:
            log(f'{step.name} FAILED; last lines of {step.log}:\n' +
                _tail(step.log, 3000))
        self.rows.append(dict(tier=step.tier, step=step.name,
                              result='passed' if ok else 'FAILED',
                              seconds=round(seconds, 1), note=note,
                              log=os.path.basename(step.log)))
        log(f'{step.name}: {"passed" if ok else "FAILED"} ({seconds:.0f} s) '
            f'{note}')

    def _skip(self, step: Step, reason: str) -> None:
        self.rows.append(dict(tier=step.tier, step=step.name,
                              result='skipped', seconds=0, note=reason,
                              log=''))
        log(f'{step.name}: skipped ({reason})')

    def run(self, steps: List[Step]) -> None:
        for step in steps:
            for name in step.wait_for:
                if name in self.procs:
                    self._finish(name)
            failed = [r['step'] for r in self.rows
                      if r['step'] in step.needs and r['result'] != 'passed']
            if step.skip is not None or failed:
                self._skip(step, step.skip or f'needs {", ".join(failed)}, '
                           f'which did not pass')
            elif step.background:
                self._start(step)
            else:
                self._start(step)
                self._finish(step.name)
        for name in list(self.procs):
            self._finish(name)


def _tail(path: str, chars: int) -> str:
    try:
        with open(path, errors='replace') as f:
            return f.read()[-chars:]
    except OSError:
        return ''


def _summary(path: str) -> str:
    """The line of a log worth a table cell (pytest's summary, the window
    benchmark's ratio), or ''."""
    lines = _tail(path, 20000).splitlines()
    for line in reversed(lines):
        if ' passed' in line or ' failed' in line or ' error' in line:
            return line.strip('= ').strip()
        if line.startswith('windowed / global'):
            return line.strip()
    return ''


def write_results(out: str, header: dict, rows: List[dict]) -> str:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out``; returns the
    markdown."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
        json.dump(dict(header, steps=rows), f, indent=2)
    lines = [header['summary'], '',
             '| tier | step | result | seconds | note |',
             '|---|---|---|---:|---|']
    lines += [f'| {r["tier"]} | {r["step"]} | {r["result"]} | '
              f'{r["seconds"]:.0f} | {r["note"]} |' for r in rows]
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'gpu_check.md'), 'w') as f:
        f.write(text)
    return text


def no_gpu_without_torch() -> Optional[str]:
    """A description of why no GPU can be visible, found without importing
    torch (which takes seconds), or None when torch must be asked."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None and visible.strip() in ('', '-1'):
        reason = 'CUDA_VISIBLE_DEVICES hides every device'
    elif sys.platform.startswith('linux') and not glob.glob('/dev/nvidia[0-9]*'):
        reason = 'no /dev/nvidia* device'
    else:
        return None
    try:
        from importlib.metadata import version
        torch_version = version('torch')
    except Exception:  # not installed in this interpreter
        torch_version = 'not installed'
    return f'{reason}; torch {torch_version}, Python {sys.version.split()[0]}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tier', default=','.join(DEFAULT_TIERS),
                        help=f'comma-separated tiers of {",".join(TIERS)} '
                             f'(default: {",".join(DEFAULT_TIERS)})')
    parser.add_argument('--out', default=None,
                        help='folder for logs and results (default: $OUT when '
                             'set, else build/gpu_check)')
    parser.add_argument('--no-write', action='store_true',
                        help='write no benchmark tables or summary into '
                             'docs/benchmarks.md (or its copy in --out)')
    parser.add_argument('--prepare-only', action='store_true',
                        help='only put the peer sdist into --carry-dir '
                             '(fetching it if needed: needs a registry)')
    parser.add_argument('--carry-dir', default=CARRY_DIR,
                        help='where the carried peer sdist is looked for '
                             '(default: build/peers)')
    args = parser.parse_args(argv)
    try:
        tiers = parse_tiers(args.tier)
    except ValueError as e:
        parser.error(str(e))
    carry_dir = os.path.abspath(args.carry_dir)
    if args.prepare_only:
        return prepare(carry_dir)
    out = out_dir(args.out)
    t_start = time.time()

    no_gpu = no_gpu_without_torch()
    if no_gpu is None:
        import torch  # seconds on a busy machine: only where a GPU may be
        versions = (f'torch {torch.__version__}, CUDA '
                    f'{torch.version.cuda or "none (a CPU build)"}, Python '
                    f'{sys.version.split()[0]}')
        if not torch.cuda.is_available():
            no_gpu = versions
    if no_gpu is not None:
        message = (f'FAILED: no CUDA GPU visible ({no_gpu}, '
                   f'CUDA_VISIBLE_DEVICES='
                   f'{os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}). make '
                   f'gpu-check needs a machine with a CUDA GPU; nothing was '
                   f'checked on a GPU (nothing built, fetched or run).')
        log(message)
        if args.out or os.environ.get('OUT'):
            write_results(out, dict(summary=message, tiers=tiers,
                                    exit_status=2, device=None), [])
        return 2

    major, minor = torch.cuda.get_device_capability(0)
    arch = f'{major}.{minor}'
    device = torch.cuda.get_device_name(0)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=arch,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1',
               TRANSFORMERS_OFFLINE='1')
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 4))
    os.makedirs(out, exist_ok=True)
    write_md = None
    if not args.no_write:
        write_md = BENCHMARKS_MD
        if args.out or os.environ.get('OUT'):
            # The machine's copy of the tree is not sent back: the tables go
            # into a copy of docs/benchmarks.md next to the other results.
            write_md = os.path.join(out, 'benchmarks.md')
            if not os.path.exists(write_md):
                shutil.copy2(BENCHMARKS_MD, write_md)
    log(f'{device} (sm_{major}{minor}), {versions}, {os.cpu_count()} CPU '
        f'cores; tiers {",".join(tiers)}; results in {out}')
    sdist = find_sdist(carry_dir)
    peer_dir = os.path.join(peer_cache_dir(), f'cuda-torch{torch.__version__}')
    steps = plan(tiers, out, arch, sdist, missing_modules(HOST_MODULES),
                 missing_modules(WINDOW_MODULES), peer_dir, write_md)
    runner = Runner(env)
    runner.run(steps)

    total = time.time() - t_start
    failed = any(r['result'] == 'FAILED' for r in runner.rows)
    summary = (f'`make gpu-check --tier {",".join(tiers)}` on {device} '
               f'(sm_{major}{minor}), {versions}, {os.cpu_count()} CPU cores, '
               f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; total '
               f'{total:.0f} s: {"FAILED" if failed else "passed"}.')
    text = write_results(out, dict(summary=summary, tiers=tiers,
                                   exit_status=1 if failed else 0,
                                   device=device, arch=arch,
                                   torch=torch.__version__,
                                   cuda=torch.version.cuda,
                                   cpu_count=os.cpu_count(),
                                   total_s=round(total, 1)), runner.rows)
    if write_md:
        sys.path.insert(0, ROOT)
        from tools.benchmark_ms_deform_attn import write_section
        write_section(write_md, SECTION, f'{SECTION}\n\n{text}')
        log(f'wrote the summary into {write_md}')
    log(f'{"FAILED" if failed else "passed"} in {total:.0f} s; results: '
        f'{os.path.join(out, "gpu_check.json")}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
