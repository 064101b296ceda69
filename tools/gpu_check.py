"""``make gpu-check``: everything a first session on a GPU machine must run.

Tiers (each prints its own verdict; the exit status is non-zero if any
tier fails, 2 when no GPU is visible):

* preparation (CPU side, runs anywhere): finds torch-ms-deform-attn's sdist
  (a benchmark peer, never a dependency) in ``$PLUGINS_CACHE_DIR/peers``
  (default ``~/.cache/plugins/peers``) or ``build/peers/``, fetching it with
  ``pip download`` where a registry is reachable, and copies it to
  ``build/peers/`` so that it can be carried to a machine without one;
* op tier (needs only torch, nvcc and pytest; builds against whatever torch
  is there): compiles the op for the local GPU's architecture, runs every
  test of ``tests/test_ops`` (the CUDA ones included), builds the peer from
  its sdist and runs ``tools/benchmark_ms_deform_attn.py --device cuda``
  (float32, bfloat16 and mixed precision at the decoder, encoder,
  Deformable-DETR 800x1333 encoder and projector shapes; achieved memory
  bandwidth against the device's peak);
* detector tier (only where mmdet, mmcv and mmengine import; otherwise
  skipped with the reason): trains the DINO demo 50 iterations on the GPU
  with bfloat16 AMP.

The figures and a summary go to ``docs/benchmarks.md`` (sections
"Multi-scale deformable attention op (CUDA)" and "GPU check").

Usage: ``make gpu-check`` or ``python tools/gpu_check.py [--prepare-only]``.
"""
import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_PYPI = 'torch-ms-deform-attn'
PEER_GLOB = 'torch_ms_deform_attn-*.tar.gz'
CARRY_DIR = os.path.join(ROOT, 'build', 'peers')
DEMO_CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'
SECTION = '## GPU check'
MMDET_OP_TEST = ('tests/test_mmdet_custom/test_models/test_layers/'
                 'test_ms_deform_attention.py')


def log(msg):
    print(f'[gpu-check] {msg}', flush=True)


def cache_dir():
    root = os.environ.get('PLUGINS_CACHE_DIR') or os.path.join(
        os.path.expanduser('~'), '.cache', 'plugins')
    return os.path.join(root, 'peers')


def find_sdist(carry_dir):
    for folder in (cache_dir(), carry_dir):
        found = sorted(glob.glob(os.path.join(folder, PEER_GLOB)))
        if found:
            return found[-1]
    return None


def prepare(carry_dir=CARRY_DIR):
    """The peer's sdist in carry_dir (to carry), or None with a note."""
    sdist = find_sdist(carry_dir)
    if sdist is None:
        os.makedirs(cache_dir(), exist_ok=True)
        log(f'fetching the {PEER_PYPI} sdist into {cache_dir()} ...')
        # --no-build-isolation: pip prepares its metadata with the torch and
        # setuptools already installed instead of downloading them.
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
               '--no-binary', ':all:', '--no-build-isolation', PEER_PYPI,
               '-d', cache_dir()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=300)
            if done.returncode != 0:
                log(f'pip download failed: {done.stderr.strip()[-300:]}')
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f'pip download failed: {e}')
        sdist = find_sdist(carry_dir)
    if sdist is None:
        log(f'{PEER_PYPI} sdist unavailable: its benchmark rows will be '
            f'skipped')
        return None
    os.makedirs(carry_dir, exist_ok=True)
    target = os.path.join(carry_dir, os.path.basename(sdist))
    if os.path.abspath(sdist) != os.path.abspath(target):
        shutil.copy2(sdist, target)
    log(f'peer sdist: {target} (carry {os.path.relpath(carry_dir, ROOT)} to a '
        f'machine without a package registry)')
    return target


def run(cmd, env, log_path, timeout):
    """Run cmd (output to the terminal and log_path); (ok, seconds)."""
    t0 = time.time()
    log('$ ' + ' '.join(cmd))
    with open(log_path, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return False, time.time() - t0
    return proc.returncode == 0, time.time() - t0


def build_peer(sdist, target, env):
    """Start building the peer (CPU and CUDA kernels) in the background."""
    if sdist is None:
        return None
    if os.path.isdir(os.path.join(target, 'torch_ms_deform_attn')):
        log(f'peer already built at {target}')
        return None
    peer_env = dict(env, FORCE_CUDA='1')
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-deps',
           '--no-build-isolation', '--no-index', '--no-cache-dir',
           '--target', target, sdist]
    log(f'building the peer in the background: {" ".join(cmd)}')
    return subprocess.Popen(cmd, cwd=ROOT, env=peer_env,
                            stdout=open(os.path.join(ROOT, 'build',
                                                     'gpu_check_peer.log'), 'w'),
                            stderr=subprocess.STDOUT)


def missing_modules(names):
    return [n for n in names if importlib.util.find_spec(n) is None]


def write_summary(lines):
    sys.path.insert(0, ROOT)
    from tools.benchmark_ms_deform_attn import write_section
    write_section(os.path.join(ROOT, 'docs', 'benchmarks.md'), SECTION,
                  '\n'.join([SECTION, ''] + lines + ['']))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--prepare-only', action='store_true',
                        help='only the CPU-side preparation')
    parser.add_argument('--no-write', action='store_true',
                        help='do not write docs/benchmarks.md')
    parser.add_argument('--carry-dir', default=CARRY_DIR,
                        help='where the peer sdist is put to be carried '
                             '(default: build/peers)')
    args = parser.parse_args(argv)
    t_start = time.time()
    sdist = prepare(os.path.abspath(args.carry_dir))
    if args.prepare_only:
        return 0

    import torch
    if not torch.cuda.is_available():
        log(f'FAILED: no CUDA GPU visible (torch {torch.__version__}, CUDA '
            f'{torch.version.cuda or "none: a CPU build"}, '
            f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}). '
            f'make gpu-check needs a machine with a CUDA GPU; nothing was '
            f'checked on a GPU.')
        return 2
    major, minor = torch.cuda.get_device_capability(0)
    device = torch.cuda.get_device_name(0)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f'{major}.{minor}',
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1',
               TRANSFORMERS_OFFLINE='1')
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 4))
    os.makedirs(os.path.join(ROOT, 'build'), exist_ok=True)
    logs = os.path.join(ROOT, 'build')
    log(f'{device} (sm_{major}{minor}), torch {torch.__version__}, CUDA '
        f'{torch.version.cuda}, Python {sys.version.split()[0]}')
    results = []  # (tier, ok or None for skipped, seconds, note)

    # Op tier.
    peer_dir = os.path.join(cache_dir(), f'cuda-torch{torch.__version__}')
    peer_proc = build_peer(sdist, peer_dir, env)
    # The CUDA kernel compiles alongside the CPU one (each is one large
    # translation unit, so ninja alone would run them one after the other).
    cuda_build = subprocess.Popen(
        [sys.executable, '-c', 'from plugins.ops.ms_deform_attn import loader; '
         'print(loader.compile_library("cuda"))'], cwd=ROOT, env=env,
        stdout=open(os.path.join(logs, 'gpu_check_build_cuda.log'), 'w'),
        stderr=subprocess.STDOUT)
    ok, secs = run([sys.executable, '-m', 'plugins.ops.build', '--cpu-only'],
                   env, os.path.join(logs, 'gpu_check_build.log'), 900)
    cuda_ok = cuda_build.wait() == 0
    if not cuda_ok:
        log('CUDA build FAILED:\n' + open(os.path.join(
            logs, 'gpu_check_build_cuda.log')).read()[-4000:])
    ok, secs = ok and cuda_ok, time.time() - t_start
    results.append(('build (op, sm_%d%d)' % (major, minor), ok, secs, ''))
    missing = missing_modules(['mmdet', 'mmcv', 'mmengine'])
    if ok:
        # The mmdet drop-in's test needs mmcv (and must fail, not skip, where
        # set-up installed it): it runs only where the detector tier can.
        extra = [] if missing else [MMDET_OP_TEST]
        ok, secs = run([sys.executable, '-m', 'pytest', 'tests/test_ops'] +
                       extra + ['-q', '-rs', '-p', 'no:cacheprovider'], env,
                       os.path.join(logs, 'gpu_check_tests.log'), 1200)
        tail = open(os.path.join(logs, 'gpu_check_tests.log')).read()
        summary = [l for l in tail.splitlines() if ' passed' in l or
                   ' failed' in l or ' error' in l]
        results.append(('op tests (tests/test_ops)', ok, secs,
                        summary[-1].strip('= ') if summary else ''))
        peer_note = ''
        if peer_proc is not None:
            if peer_proc.wait() != 0:
                peer_note = (f'{PEER_PYPI} build failed (build/'
                             f'gpu_check_peer.log): no peer rows')
                log(peer_note)
        elif sdist is None:
            peer_note = f'{PEER_PYPI} sdist not carried: no peer rows'
        bench = [sys.executable, 'tools/benchmark_ms_deform_attn.py',
                 '--device', 'cuda', '--reps', '20', '--peer-dir', peer_dir]
        if not args.no_write:
            bench += ['--write', 'docs/benchmarks.md']
        ok, secs = run(bench, env, os.path.join(logs, 'gpu_check_bench.log'),
                       900)
        results.append(('op benchmark (CUDA)', ok, secs, peer_note))
        # The cost of the deterministic backward (issue 18, item 4).
        bench = [sys.executable, 'tools/benchmark_ms_deform_attn.py',
                 '--device', 'cuda', '--reps', '20', '--deterministic',
                 '--shapes', 'a,c', '--dtypes', 'float32,mixed', '--impls',
                 'ours', '--no-mmcv', '--no-peer']
        if not args.no_write:
            bench += ['--write', 'docs/benchmarks.md']
        ok, secs = run(bench, env, os.path.join(logs, 'gpu_check_det.log'), 600)
        results.append(('op benchmark (CUDA, deterministic)', ok, secs, ''))

    # Detector tier.
    if missing:
        results.append(('detector: DINO demo 50 iters, bf16 AMP', None, 0,
                        f'skipped: {", ".join(missing)} not importable here '
                        f'(so is {MMDET_OP_TEST})'))
    else:
        toy = os.path.join(ROOT, 'data', 'toy', 'annotations',
                           'instances_train.json')
        if not os.path.isfile(toy):
            run([sys.executable, 'tools/make_toy_dataset.py', '--out',
                 'data/toy'], env, os.path.join(logs, 'gpu_check_toy.log'), 300)
        ok, secs = run(
            [sys.executable, 'tools/train.py', DEMO_CONFIG, '--amp',
             '--work-dir', 'work_dirs/gpu_check_dino', '--cfg-options',
             'train_cfg.max_iters=50', 'train_cfg.val_interval=50',
             'default_hooks.checkpoint.interval=50',
             'optim_wrapper.dtype=bfloat16'],
            env, os.path.join(logs, 'gpu_check_dino.log'), 900)
        results.append(('detector: DINO demo 50 iters, bf16 AMP', ok, secs,
                        'log: build/gpu_check_dino.log'))

    total = time.time() - t_start
    lines = [f'`make gpu-check` on {device} (sm_{major}{minor}), torch '
             f'{torch.__version__}, CUDA {torch.version.cuda}, Python '
             f'{sys.version.split()[0]}, {os.cpu_count()} CPU cores, '
             f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; total '
             f'{total:.0f} s.', '',
             '| tier | result | seconds | note |', '|---|---|---:|---|']
    failed = False
    for tier, ok, secs, note in results:
        verdict = 'skipped' if ok is None else 'passed' if ok else 'FAILED'
        failed |= ok is False
        lines.append(f'| {tier} | {verdict} | {secs:.0f} | {note} |')
        log(f'{tier}: {verdict} ({secs:.0f} s) {note}')
    if not args.no_write:
        write_summary(lines)
        log('wrote docs/benchmarks.md')
    log(f'{"FAILED" if failed else "passed"} in {total:.0f} s')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
