"""Inference latency of a detector: eager, torch.compile, AOTInductor, ONNX
Runtime, and tools/infer.py's images per second, in one run.

What is timed is the exported program's function (see
plugins/mmdet_custom/apis/export.py): a ``(1, 3, H, W)`` float image,
normalisation, backbone, neck, transformer, head, top-K boxes.  Every path
runs the same weights (random, ``init_weights`` of the config's model with
no pretrained file, saved once as a checkpoint) on the same image:

* ``eager``: the PyTorch module (our op's CPU/CUDA kernel);
* ``compile``: ``torch.compile`` of that module (default mode);
* ``aoti``: ``torch.export`` + AOTInductor ``.pt2`` package (our op kept as
  our kernel), loaded with ``plugins.ops.aoti_load_package``;
* ``onnx``: the ONNX file (our op as gathers) in ONNX Runtime (CPU only:
  the pinned onnxruntime has no CUDA provider);
* ``infer``: ``run_inference`` (tools/infer.py) on a folder of images of
  the same size (config test pipeline resized to H x W): reading, pipeline,
  model, JSON and pictures, in images per second.

Latency rounds are interleaved (one call of each path per round) so that the
shared machine's load falls on all paths alike; reported are the median,
min and max over rounds, the speed-up of the median against eager, the
agreement of each path's top-K with eager's, and the load average before and
after.  On CUDA (``--device cuda``) the model runs in bfloat16 autocast
(eager, compile) or is exported in bfloat16 (aoti).

Usage::

    python tools/benchmark_inference.py [--config CFG] [--size 512 512]
        [--threads 2] [--rounds 5] [--paths eager compile aoti onnx infer]
        [--infer-images 8] [--device cpu|cuda] [--work-dir DIR]
        [--write docs/benchmarks.md]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = ('## Inference: eager, torch.compile, AOTInductor, ONNX Runtime '
           '(issue 24)')
CONFIG = 'configs/dino/dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py'
PATHS = ('eager', 'compile', 'aoti', 'onnx', 'infer')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=CONFIG)
    p.add_argument('--checkpoint', help='trained weights (default: random '
                   'init_weights, saved to the work dir)')
    p.add_argument('--size', type=int, nargs=2, default=(512, 512),
                   metavar=('H', 'W'))
    p.add_argument('--threads', type=int, default=2,
                   help='CPU threads of every path (torch and ORT)')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--paths', nargs='+', default=list(PATHS), choices=PATHS)
    p.add_argument('--infer-images', type=int, default=8)
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--work-dir', default='work_dirs/benchmark_inference')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='key=value config overrides (python literals)')
    p.add_argument('--write', help='replace the section in this markdown '
                   'file (e.g. docs/benchmarks.md)')
    return p.parse_args(argv)


def load_average() -> str:
    try:
        return ' '.join(f'{x:.1f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def random_checkpoint(config: str, out: Path, cfg_options: dict) -> Path:
    """``init_weights`` of the config's model (no pretrained files), saved
    as a state dict: the benchmark's stand-in for trained weights."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import plugins.mmdet_custom  # noqa: F401  (registers the wing)
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': model.state_dict()}, out)
    return out


def _parse_options(items: List[str]) -> dict:
    import ast
    opts = {}
    for item in items:
        key, _, value = item.partition('=')
        try:
            opts[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            opts[key] = value
    return opts


def _time(fn: Callable, sync: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _agreement(ref, out) -> Dict[str, float]:
    """Top-K agreement with eager: the one comparison of exported programs
    (matched detection to detection; near-tied scores may swap places:
    ``compare_detections``)."""
    from plugins.mmdet_custom.apis.export import compare_detections
    r = compare_detections(out, ref)
    return dict(ok=r['ok'], box_px=r['max_box_px'], score=r['max_score'],
                moved=r['moved'], boundary=r['boundary_unmatched'],
                problems=r['problems'])


def set_resize(cfg, size) -> None:
    """Make the config's test pipeline resize every image to ``size``
    (H, W), so that tools/infer.py's model sees the benchmark's input."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.get('type') in ('Resize', 'FixScaleResize'):
            step['scale'] = (size[1], size[0])
            step['keep_ratio'] = False


def run(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import plugins.mmdet_custom  # noqa: F401  (registers the wing)
    from plugins.mmdet_custom.apis import init_detector, run_inference
    from plugins.mmdet_custom.apis.export import (DetectorExportModule,
                                                  onnx_session, to_aoti,
                                                  to_onnx, trace_detector)
    from plugins.ops import aoti_load_package

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    opts = _parse_options(args.cfg_options)
    load_before = load_average()
    ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(
        args.config, work / 'random_init.pth', opts)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = init_detector(args.config, str(ckpt), device='cpu',
                          cfg_options=opts)
    module = DetectorExportModule(model).eval()
    H, W = args.size
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, H, W, generator=gen) * 255).to(device)
    module.to(device)
    dtype_note = 'float32'
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=cuda)
    if cuda:
        dtype_note = 'bfloat16'
    runners: Dict[str, Callable] = {}
    setup_s: Dict[str, float] = {}
    with torch.no_grad(), autocast:
        ref = module(image)
    runners['eager'] = lambda: module(image)

    if 'compile' in args.paths:
        compiled = torch.compile(module)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast:
            out_compile = compiled(image)
        setup_s['compile'] = time.perf_counter() - t0
        runners['compile'] = lambda: compiled(image)
    outs = {'compile': out_compile} if 'compile' in args.paths else {}

    if 'aoti' in args.paths or 'onnx' in args.paths:
        t0 = time.perf_counter()
        export_module = module
        if cuda:  # AOTI in bfloat16 (autocast is not exported)
            export_module = DetectorExportModule(model.to(torch.bfloat16))
        program = trace_detector(export_module, image)
        setup_s['export'] = time.perf_counter() - t0
    if 'aoti' in args.paths:
        t0 = time.perf_counter()
        to_aoti(program, str(work / 'model.pt2'))
        runner = aoti_load_package(str(work / 'model.pt2'))
        setup_s['aoti'] = time.perf_counter() - t0
        with torch.no_grad():
            outs['aoti'] = runner(image)
        runners['aoti'] = lambda: runner(image)
    if 'onnx' in args.paths and not cuda:
        t0 = time.perf_counter()
        to_onnx(program, str(work / 'model.onnx'))
        session = onnx_session(str(work / 'model.onnx'), args.threads)
        setup_s['onnx'] = time.perf_counter() - t0
        feed = {'images': image.cpu().numpy()}
        outs['onnx'] = [torch.from_numpy(x) for x in session.run(None, feed)]
        runners['onnx'] = lambda: session.run(None, feed)

    times: Dict[str, List[float]] = {k: [] for k in runners}
    with torch.no_grad(), autocast:
        for fn in runners.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in runners.items():
                times[name].append(_time(fn, sync))

    rows = []
    eager_med = statistics.median(times['eager'])
    for name, ts in times.items():
        med = statistics.median(ts)
        row = dict(path=name, median_s=med, min_s=min(ts), max_s=max(ts),
                   speedup=eager_med / med, setup_s=setup_s.get(name))
        if name in outs:
            row['agreement'] = _agreement(ref, outs[name])
        rows.append(row)

    infer = None
    if 'infer' in args.paths:
        folder = work / 'infer_images'
        folder.mkdir(exist_ok=True)
        rng = np.random.RandomState(0)
        for i in range(args.infer_images):
            Image.fromarray(rng.randint(0, 256, (H, W, 3), dtype=np.uint8)
                            ).save(folder / f'{i:03d}.png')
        set_resize(model.cfg, (H, W))
        model.float().to(device)
        summary = run_inference(model, [str(folder)], str(work / 'infer_out'),
                                batch_size=1, score_thr=0.3, draw=True,
                                progress=False)
        infer = dict(images=summary.images, seconds=summary.seconds,
                     images_per_s=summary.images_per_second)

    return dict(config=args.config, size=[H, W], threads=args.threads,
                device=args.device, dtype=dtype_note, rounds=args.rounds,
                rows=rows, infer=infer, setup_s=setup_s,
                load_before=load_before, load_after=load_average(),
                torch=torch.__version__, cpu=platform.processor() or
                platform.machine(), nproc=os.cpu_count(),
                date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))


def markdown(result: dict, command: str) -> str:
    H, W = result['size']
    lines = [
        SECTION, '',
        f'`{result["config"]}`, random weights, batch 1, {H}x{W}, '
        f'{result["device"]} ({result["dtype"]}), {result["threads"]} threads, '
        f'{result["rounds"]} interleaved rounds after one warm-up; '
        f'{result["date"]}, torch {result["torch"]}, {result["nproc"]}-core '
        f'shared machine, load average {result["load_before"]} before and '
        f'{result["load_after"]} after (1, 5, 15 min).', '',
        f'```bash\n{command}\n```', '',
        '| path | median s | min s | max s | speed-up vs eager (median) | '
        'one-time cost s | top-K vs eager (compare_detections): max boxes '
        'px / max scores / agrees (moved among near-ties, swapped at K) |',
        '|---|---|---|---|---|---|---|']
    for r in result['rows']:
        agree = r.get('agreement')
        agree_s = (f'{agree["box_px"]:.2e} / {agree["score"]:.2e} / '
                   f'{"yes" if agree["ok"] else "NO"} ({agree["moved"]}, '
                   f'{agree["boundary"]})' if agree else '(reference)')
        setup = r.get('setup_s')
        lines.append(
            f'| {r["path"]} | {r["median_s"]:.3f} | {r["min_s"]:.3f} | '
            f'{r["max_s"]:.3f} | {r["speedup"]:.2f}x | '
            f'{"" if setup is None else f"{setup:.0f}"} | {agree_s} |')
    if result['infer']:
        i = result['infer']
        lines += ['', f'`tools/infer.py` (run_inference, batch 1, pictures '
                  f'written) on {i["images"]} {H}x{W} PNGs: '
                  f'{i["images_per_s"]:.2f} images/s ({i["seconds"]:.1f} s).']
    if 'export' in result['setup_s']:
        lines += ['', f'torch.export of the model took '
                  f'{result["setup_s"]["export"]:.0f} s; the one-time cost '
                  'column is the first compiled call (compile), the '
                  'AOTInductor compile + load (aoti), and the ONNX write + '
                  'session start (onnx).']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    command = 'python tools/benchmark_inference.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    text = markdown(result, command.strip())
    print(text)
    out = Path(args.work_dir) / 'result.json'
    out.write_text(json.dumps(result, indent=2))
    if args.write:
        from tools.benchmark_ms_deform_attn import write_section
        write_section(args.write, SECTION, text)


if __name__ == '__main__':
    main()
