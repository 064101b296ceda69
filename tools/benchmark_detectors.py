"""Does the 8-64 pyramid find small objects better than 16-128?  And what
does a ViT-B/16 cost at 1024x1024?

The defaults (3 seeds x 4 necks x 60 iterations on 256x256 images, the low
end of the small-object set's 256-512 px) are sized so that the whole run
takes about 40 minutes on a shared 2-core CPU; on a free or bigger machine
raise ``--iters`` and ``--max-size``.

Part 1 trains the tiny demo detector
(``configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck_toy-small.py``: DINO +
SurgeryCLIP ``ViT-Tiny-16-test`` + ``DeformableCrossAttentionNeck``, random
weights) on the small-object toy set (``tools/make_toy_dataset.py --variant
small``: 4-10 shapes with 6-24 px boxes per image; written here if missing)
for four necks, with the same schedule and data for each seed:

* ``16-128 deform``: strides 16, 32, 64, 128 (the earlier default), one
  deformable cross-attention block refining all levels;
* ``8-64 deform``: strides 8, 16, 32, 64 (stride 8 by a transposed conv);
* ``16-128 plain`` / ``8-64 plain``: the same pyramids without refinement
  (``num_layers=0``: each level only 1x1 conv + GroupNorm, a
  ChannelMapper-style baseline).

Finished runs are kept in ``<work-dir>/rows.jsonl`` (per ``--iters``), so
a long benchmark can be split into several calls, also at the same time
(e.g. ``--seeds 1`` and ``--seeds 2``); a call skips the runs that are
finished or whose folder exists, and reports every finished run.

Each run is ``tools/train.py`` in a subprocess (train on the first 8 images,
evaluate on the same 8, as the demo does); the runs of one seed are
interleaved so that background load falls on all necks alike.  Reported:
COCO bbox mAP, mAP_s (all objects here are small), mAP@50, and the median
seconds per training iteration; mean, sample standard deviation and range
over the seeds, and the paired 8-64 minus 16-128 difference per seed.

Part 2: peak memory and time of one forward + backward of
``OpenCLIPBackbone('ViT-B-16')`` (random weights, trainable) on a
``(1, 3, S, S)`` input with global attention in every block (peak memory as
in tools/benchmark_backbones.py: CUDA allocator statistics, or on CPU the
replayed profiler allocation events).  Windowed attention is measured by
tools/benchmark_window_attention.py; its row points there.

Usage::

    python tools/benchmark_detectors.py [--seeds 0 1 2] [--iters 60]
        [--min-size 256] [--max-size 256] [--data data/toy_small_bench]
        [--necks 16-128-deform 8-64-deform ...] [--vit-size 1024]
        [--skip-train] [--skip-vit] [--device cpu]
        [--write docs/benchmarks.md]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = '## Detectors: pyramid strides on small objects (issue 16)'
CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck_toy-small.py'
NECKS: Dict[str, dict] = {
    '16-128-deform': dict(out_strides=[16, 32, 64, 128], num_layers=1),
    '8-64-deform': dict(out_strides=[8, 16, 32, 64], num_layers=1),
    '16-128-plain': dict(out_strides=[16, 32, 64, 128], num_layers=0),
    '8-64-plain': dict(out_strides=[8, 16, 32, 64], num_layers=0),
}
METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_s', 'coco/bbox_mAP_50')


# ----------------------------------------------------------------------
# Part 1: training runs
# ----------------------------------------------------------------------
def ensure_data(root: Path, min_size: int, max_size: int) -> Path:
    ann = root / 'annotations' / 'instances_train8.json'
    if not ann.is_file():
        from tools.make_toy_dataset import make_small_object_dataset
        make_small_object_dataset(root, num_train=8, num_val=0,
                                  min_size=min_size, max_size=max_size,
                                  seed=0)
    return root


def train_once(neck: str, seed: int, iters: int, data: Path,
               work_dir: Path) -> dict:
    """One training run; its final metrics and median time per iteration."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data_root = f'{data}/'
    options = [
        f'model.neck.out_strides={NECKS[neck]["out_strides"]}'.replace(
            ' ', ''),
        f'model.neck.num_layers={NECKS[neck]["num_layers"]}',
        f'randomness.seed={seed}',
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        'default_hooks.checkpoint.interval=100000',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={data_root}annotations/'
        'instances_train8.json',
        f'test_evaluator.ann_file={data_root}annotations/'
        'instances_train8.json',
    ]
    cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), CONFIG,
           '--work-dir', str(work_dir), '--cfg-options'] + options
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    (work_dir / 'run.log').write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f'{neck} seed {seed} failed (exit '
                           f'{proc.returncode}); log: {work_dir}/run.log\n'
                           + (proc.stdout + proc.stderr)[-2000:])
    return read_run(neck, seed, work_dir, wall)


def read_run(neck: str, seed: int, work_dir: Path, wall: float) -> dict:
    """A finished run's final metrics and median seconds per iteration
    (from its ``vis_data/scalars.json``)."""
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))[-1]
    entries = [json.loads(line) for line in scalars.read_text().splitlines()]
    times = [e['time'] for e in entries
             if 'loss' in e and 'time' in e and e.get('step', 0) > 5]
    final = [e for e in entries if METRICS[0] in e][-1]
    row = dict(neck=neck, seed=seed, wall=wall,
               time=statistics.median(times))
    row.update({m: float(final[m]) for m in METRICS})
    return row


def _stored_rows(store: Path, iters: int) -> List[dict]:
    if not store.is_file():
        return []
    return [r for r in map(json.loads, store.read_text().splitlines())
            if r.get('iters') == iters]


def _done(store: Path, iters: int) -> set:
    return {(r['neck'], r['seed']) for r in _stored_rows(store, iters)}


def summarize(rows: List[dict]) -> Dict[str, dict]:
    out = {}
    for neck in NECKS:
        runs = [r for r in rows if r['neck'] == neck]
        if not runs:
            continue
        s = dict(n=len(runs))
        for key in METRICS + ('time', ):
            vals = [r[key] for r in runs]
            s[key] = (statistics.mean(vals),
                      statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      min(vals), max(vals))
        out[neck] = s
    return out


def paired(rows: List[dict], fine: str, coarse: str,
           key: str = 'coco/bbox_mAP_s') -> List[float]:
    by = {(r['neck'], r['seed']): r[key] for r in rows}
    return [by[(fine, s)] - by[(coarse, s)] for s in sorted(
        {r['seed'] for r in rows}) if (fine, s) in by and (coarse, s) in by]


# ----------------------------------------------------------------------
# Part 2: ViT-B/16 at a large input
# ----------------------------------------------------------------------
def vit_forward_backward(size: int, device: str) -> dict:
    import torch

    from tools.benchmark_backbones import peak_memory
    from plugins.mmdet_custom.models.backbones import OpenCLIPBackbone
    model = OpenCLIPBackbone(model_name='ViT-B-16').to(device).train()
    x = torch.randn(1, 3, size, size, device=device)

    def step(inp):
        model.zero_grad(set_to_none=True)
        model(inp)[0].float().sum().backward()

    mem = peak_memory(step, x)  # also the warm-up (position-embedding cache)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(x)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return dict(size=size, mem=mem, time=time.perf_counter() - t0,
                tokens=(size // 16)**2,
                when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------
def _fmt(stat, digits=3):
    mean, sd, lo, hi = stat
    return f'{mean:.{digits}f} ± {sd:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})'


def _sides(lo: int, hi: int) -> str:
    return f'{lo}x{lo}' if lo == hi else f'{lo}-{hi}'


def section_text(rows, vit, args, elapsed) -> str:
    from tools.benchmark_backbones import device_name, load_average
    cmd = ' '.join(['python tools/benchmark_detectors.py'] + sys.argv[1:])
    lines = [SECTION, '', f'Measured with `nice {cmd}` on '
             f'{device_name(args.device)} (a machine shared with other '
             f'jobs), {elapsed / 60:.0f} min for this call (runs finished '
             'by earlier calls are included, see rows.jsonl).', '']
    if rows:
        seeds = sorted({r['seed'] for r in rows})
        lines += [
            f'Tiny demo detector (`{CONFIG}`) on the small-object toy set '
            f'(`{args.data}`: 8 images of '
            f'{_sides(args.min_size, args.max_size)} px, '
            '4-10 shapes each with 6-24 px boxes; trained and evaluated on '
            f'the same 8 images), {args.iters} iterations of batch 2 '
            '(AdamW 2e-4, warm-up 20, the demo\'s optimiser), seeds '
            f'{", ".join(map(str, seeds))}. Mean ± sample std (min-max) '
            'over the seeds; time: median seconds per training iteration.',
            '', '| neck | strides | refinement | mAP | mAP_s | mAP@50 | '
            's / iter |', '|---|---|---|---|---|---|---|']
        for neck, s in summarize(rows).items():
            strides, kind = neck.rsplit('-', 1)
            lines.append(
                f'| {neck} | {strides} | '
                f'{"1 deformable block" if kind == "deform" else "none (1x1 conv + GN)"} | '
                f'{_fmt(s["coco/bbox_mAP"])} | {_fmt(s["coco/bbox_mAP_s"])} | '
                f'{_fmt(s["coco/bbox_mAP_50"])} | {_fmt(s["time"], 2)} |')
        lines += ['', 'Per seed, mAP_s (8-64 minus 16-128, same neck type, '
                  'same seed):', '']
        for kind in ('deform', 'plain'):
            d = paired(rows, f'8-64-{kind}', f'16-128-{kind}')
            if d:
                lines.append(f'* {kind}: ' + ', '.join(f'{v:+.3f}' for v in d)
                             + f' ({sum(v > 0 for v in d)} of {len(d)} seeds '
                             'higher with 8-64)')
        lines += ['', '<details><summary>every run</summary>', '',
                  '| neck | seed | mAP | mAP_s | mAP@50 | s / iter | wall s |',
                  '|---|---|---|---|---|---|---|']
        lines += [f'| {r["neck"]} | {r["seed"]} | {r["coco/bbox_mAP"]:.3f} | '
                  f'{r["coco/bbox_mAP_s"]:.3f} | {r["coco/bbox_mAP_50"]:.3f} | '
                  f'{r["time"]:.2f} | {r["wall"]:.0f} |' for r in rows]
        lines += ['', '</details>', '']
    if vit:
        lines += [
            f'ViT-B/16 (`OpenCLIPBackbone(\'ViT-B-16\')`, random weights, '
            f'trainable), one forward + backward of a (1, 3, {vit["size"]}, '
            f'{vit["size"]}) input ({vit["tokens"]} patch tokens):', '',
            f'(measured {vit.get("when", "in this call")})', '',
            '| attention | peak memory (MiB) | time (s) |', '|---|---|---|',
            f'| global, all 12 blocks | {vit["mem"]:.0f} | {vit["time"]:.1f} |',
            '| windowed (window 14, 4 global blocks) | see "Windowed '
            'attention" (`tools/benchmark_window_attention.py`) | - |', '']
    lines += [f'Load average at the end: {load_average()}.', '']
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=60)
    p.add_argument('--necks', nargs='+', default=list(NECKS),
                   choices=list(NECKS))
    p.add_argument('--data', default='data/toy_small_bench')
    p.add_argument('--min-size', type=int, default=256)
    p.add_argument('--max-size', type=int, default=256)
    p.add_argument('--work-dir', default='work_dirs/benchmark_detectors')
    p.add_argument('--vit-size', type=int, default=1024)
    p.add_argument('--device', default='cpu', help='for the ViT part')
    p.add_argument('--skip-train', action='store_true')
    p.add_argument('--skip-vit', action='store_true')
    p.add_argument('--write', help='markdown file to put the section into')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows: List[dict] = []
    if not args.skip_train:
        data = ensure_data(ROOT / args.data, args.min_size, args.max_size)
        # Finished runs are kept in rows.jsonl: a later call (other --necks
        # or --seeds) adds to them, and the report covers all of them.
        store = ROOT / args.work_dir / 'rows.jsonl'
        store.parent.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for neck in args.necks:
                run_dir = ROOT / args.work_dir / f'{neck}_seed{seed}'
                if (neck, seed) in _done(store, args.iters):
                    continue
                if run_dir.exists():  # another call is running it
                    print(f'skipping {neck} seed {seed}: {run_dir} exists '
                          '(another call runs it, or it failed: delete the '
                          'folder to redo it)', flush=True)
                    continue
                row = train_once(neck, seed, args.iters, data, run_dir)
                row['iters'] = args.iters
                with open(store, 'a') as f:
                    f.write(json.dumps(row) + '\n')
                print(json.dumps(row), flush=True)
        rows = _stored_rows(store, args.iters)
        order = list(NECKS)
        rows.sort(key=lambda r: (r['seed'], order.index(r['neck'])))
    vit = None
    vit_store = ROOT / args.work_dir / f'vit_{args.vit_size}_{args.device}.json'
    if not args.skip_vit:
        vit = vit_forward_backward(args.vit_size, args.device)
        vit_store.parent.mkdir(parents=True, exist_ok=True)
        vit_store.write_text(json.dumps(vit))
        print(json.dumps(vit), flush=True)
    elif vit_store.is_file():  # measured by an earlier call
        vit = json.loads(vit_store.read_text())
    text = section_text(rows, vit, args, time.perf_counter() - start)
    print(text)
    if args.write:
        from tools.benchmark_ms_deform_attn import write_section
        write_section(args.write, SECTION, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
