"""Region scoring throughput (regions/s) on CPU: tiny model and ViT-B-32.

One random 512x512 image with ``--regions`` random boxes (each with a mask)
is scored by :class:`plugins.scoring.RegionScorer` (random weights, COCO-80
positives + background negatives, text features cached by a warm-up call).
Two numbers per model and strategy, the best of ``--reps`` interleaved
runs (as ``timeit`` does: on a shared, loaded machine the fastest run is
the one least disturbed by other processes):

* ``end-to-end``: ``scorer.score(image, boxes, masks)``: crop, mask,
  preprocess (PIL resize + normalise), encode in batches, head, records;
* ``encode only``: ``scorer.encode_crops`` on ready crops (preprocess +
  image tower).

Usage::

    python tools/benchmark_region_scoring.py [--models ViT-Tiny-16-test
        ViT-B-32] [--regions 64] [--batch-size 32] [--threads 2]
        [--reps 3] [--write docs/benchmarks.md]
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECTION = '## Region scoring'


def random_regions(n, size, seed=0):
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
    boxes, masks = [], []
    for _ in range(n):
        x1, y1 = rng.randint(0, size - 40, 2)
        w, h = rng.randint(16, min(200, size - max(x1, y1)), 2)
        boxes.append([float(x1), float(y1), float(x1 + w), float(y1 + h)])
        m = np.zeros((size, size), bool)
        m[y1 + h // 4:y1 + 3 * h // 4, x1 + w // 4:x1 + 3 * w // 4] = True
        masks.append(m)
    return image, boxes, masks


def best_times(fns, reps):
    """Best wall time of each function, runs interleaved so that load from
    other processes hits all of them alike."""
    best = [float('inf')] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def bench(model_name, strategies, n_regions, batch_size, reps):
    from plugins.scoring import build_region_scorer
    scorer = build_region_scorer(model_name, batch_size=batch_size)
    image, boxes, masks = random_regions(n_regions, 512)
    rows = []
    for strategy in strategies:
        scorer.strategy = strategy
        scorer.score(image, boxes[:2], masks[:2])  # warm-up, text cache
        crops = scorer.prepare_crops(image, boxes, masks)
        t_all, t_enc = best_times([
            lambda: scorer.score(image, boxes, masks),
            lambda: scorer.encode_crops(crops)
        ], reps)
        rows.append(
            dict(model=model_name,
                 strategy=strategy,
                 e2e=n_regions / t_all,
                 enc=n_regions / t_enc))
        print(
            f'{model_name} {strategy}: {rows[-1]["e2e"]:.1f} regions/s '
            f'end-to-end, {rows[-1]["enc"]:.1f} encode only',
            flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models',
                   nargs='+',
                   default=['ViT-Tiny-16-test', 'ViT-B-32'])
    p.add_argument('--strategies', nargs='+', default=['gray', 'soft'])
    p.add_argument('--regions', type=int, default=64)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--write', help='markdown file to update')
    args = p.parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += bench(name, args.strategies, args.regions, args.batch_size,
                      args.reps)
    lines = [
        SECTION, '', f'`python tools/benchmark_region_scoring.py` on CPU '
        f'({platform.processor() or platform.machine()}, '
        f'{args.threads} threads, torch {torch.__version__}): '
        f'{args.regions} masked regions of a 512x512 image, batch '
        f'{args.batch_size}, best of {args.reps}, random weights, '
        '80 positive + 20 negative prompts (text features cached). '
        'End-to-end = crop + mask + preprocess + encode + head; encode = '
        'preprocess + image tower.', '',
        '| model | strategy | regions/s end-to-end | regions/s encode |',
        '|---|---|---|---|'
    ]
    lines += [
        f"| {r['model']} | {r['strategy']} | {r['e2e']:.1f} | "
        f"{r['enc']:.1f} |" for r in rows
    ]
    body = '\n'.join(lines) + '\n'
    print(body)
    if args.write:
        from tools.benchmark_ms_deform_attn import write_section
        write_section(args.write, SECTION, body)
    return rows


if __name__ == '__main__':
    main()
