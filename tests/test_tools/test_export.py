"""tools/export.py: the demo detector as ONNX (our op as gathers, run by
ONNX Runtime) and as an AOTInductor package (our op kept), each reproducing
eager PyTorch's top-K boxes, scores and labels; bad requests fail at once
and an untraceable model names its module (issue 24.2)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import plugins.mmdet_custom  # noqa: F401  (registers the wing)
from plugins.mmdet_custom.apis import init_detector
from plugins.mmdet_custom.apis.export import (DetectorExportModule,
                                              ExportError, compare_detections,
                                              export_detector, onnx_session)
from tools import export as export_tool

CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'
GROUNDING = ('configs/_demo_/grounding_dino-4scale_surgeryclip-tiny_'
             'deformneck-s16-128_toy.py')
PROMPT = 'red shape . blue shape . circle'
NAMES = ['red shape', 'blue shape', 'circle']
SIZE = (128, 128)  # a multiple of the demo's pad divisor (32)


@pytest.fixture(scope='module')
def demo_checkpoint(repo_root, tmp_path_factory) -> Path:
    """The demo detector with initialised random weights, as the runner
    saves a checkpoint."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(repo_root / CONFIG))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('ckpt') / 'demo.pth'
    torch.save({'meta': {'iter': 0}, 'state_dict': model.state_dict()}, path)
    return path


@pytest.fixture(scope='module')
def eager(repo_root, demo_checkpoint):
    model = init_detector(str(repo_root / CONFIG), str(demo_checkpoint))
    return DetectorExportModule(model).eval()


def _image(size, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *size, generator=g) * 255


def _assert_same_detections(got, want, what):
    # boxes 1e-2 px, scores 1e-4, same labels; near-tied scores may swap
    report = compare_detections(got, want)
    assert report['ok'], f'{what}: {report}'
    return report


def test_export_module_is_the_test_path(eager):
    """The exported function (RGB 0-255 in, normalisation inside) predicts
    what the detector's own data preprocessor + predict give for the same
    picture loaded as mmcv loads it (BGR)."""
    from mmdet.structures import DetDataSample
    rgb = _image(SIZE, seed=1).round()
    detector = eager.detector
    meta = dict(img_shape=SIZE, ori_shape=SIZE, scale_factor=(1.0, 1.0))
    data = detector.data_preprocessor(
        dict(inputs=[rgb[0].flip(0).to(torch.uint8)],
             data_samples=[DetDataSample(metainfo=meta)]))
    with torch.no_grad():
        want = detector.predict(data['inputs'], data['data_samples'],
                                rescale=False)[0].pred_instances
        got = eager(rgb)
    K = detector.bbox_head.test_cfg['max_per_img']
    assert got[0].shape == (1, K, 4) and got[2].dtype == torch.int64
    _assert_same_detections(got, (want.bboxes[None], want.scores[None],
                                  want.labels[None]), 'predict')


def test_onnx_matches_eager(repo_root, demo_checkpoint, eager, tmp_path):
    out = tmp_path / 'demo.onnx'
    meta = export_detector(str(repo_root / CONFIG), str(demo_checkpoint),
                           'onnx', str(out), size=SIZE)
    saved = json.loads(Path(str(out) + '.json').read_text())
    assert saved == meta
    assert saved['size'] == list(SIZE) and saved['pad_size_divisor'] == 32
    assert saved['class_names'] == ['circle', 'square', 'triangle']
    assert saved['max_per_img'] == 50
    model = onnx.load(str(out))
    ops = {(n.domain or 'ai.onnx', n.op_type) for n in model.graph.node}
    assert {d for d, _ in ops} == {'ai.onnx'}  # no custom-op library
    assert ('ai.onnx', 'GridSample') not in ops
    session = onnx_session(str(out))
    assert [i.name for i in session.get_inputs()] == ['images']
    assert [o.name for o in session.get_outputs()] == ['boxes', 'scores',
                                                       'labels']
    for seed in (2, 3):
        image = _image(SIZE, seed)
        with torch.no_grad():
            want = eager(image)
        got = session.run(None, {'images': image.numpy()})
        _assert_same_detections(got, want, f'onnx, image {seed}')


# The deployment contract (issue 24): a fresh process needs only
# `import plugins.ops` and torch's own loader; our op's kernel library is
# loaded by the package's first call, not before.
AOTI_CHECK = r'''
import sys, torch
import plugins.ops
runner = torch._inductor.aoti_load_package(sys.argv[1])
from plugins.ops.ms_deform_attn import loader
assert not loader._state, f'op library loaded before the first call: {loader._state}'
image = torch.load(sys.argv[2])
boxes, scores, labels = runner(image)
assert loader.status('cpu')['source'] in ('installed', 'cache', 'jit'), loader.status('cpu')
torch.save({'boxes': boxes, 'scores': scores, 'labels': labels}, sys.argv[3])
'''


# AOTInductor compiles C++ for minutes: 375 s measured for this test on the
# shared 2-core machine at load average 8-10 (2026-12-07); `slow` still runs
# in `make test` (pytest.ini).
@pytest.mark.slow
def test_aoti_package_matches_eager_in_a_fresh_process(
        repo_root, demo_checkpoint, eager, tmp_path):
    out = tmp_path / 'demo.pt2'
    t0 = time.perf_counter()
    export_tool.main([str(repo_root / CONFIG), str(demo_checkpoint),
                      '--format', 'aoti', '--out', str(out),
                      '--size', *map(str, SIZE), '--verify', '5'])
    print(f'AOTInductor export of the demo model at {SIZE}: '
          f'{time.perf_counter() - t0:.0f} s')
    verified = json.loads(Path(str(out) + '.json').read_text())['verify']
    assert verified['ok'] and verified['seed'] == 5, verified
    image = _image(SIZE, seed=4)
    torch.save(image, tmp_path / 'image.pt')
    result = subprocess.run(
        [sys.executable, '-c', AOTI_CHECK, str(out), str(tmp_path / 'image.pt'),
         str(tmp_path / 'got.pt')], cwd=repo_root, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    got = torch.load(tmp_path / 'got.pt')
    with torch.no_grad():
        want = eager(image)
    _assert_same_detections([got['boxes'], got['scores'], got['labels']],
                            want, 'aoti')


def test_bad_requests_fail_at_once(repo_root, demo_checkpoint, tmp_path):
    config = str(repo_root / CONFIG)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit):  # argparse: invalid choice
        export_tool.parse_args([config, str(demo_checkpoint), '--format',
                                'tflite', '--out', str(tmp_path / 'x')])
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_detector(config, str(demo_checkpoint), 'tflite',
                        str(tmp_path / 'x'))
    with pytest.raises(SystemExit, match='checkpoint not found'):
        export_tool.main([config, str(tmp_path / 'missing.pth'), '--format',
                          'onnx', '--out', str(tmp_path / 'x.onnx')])
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        export_detector(config, str(tmp_path / 'missing.pth'), 'onnx',
                        str(tmp_path / 'x.onnx'))
    assert time.perf_counter() - t0 < 10  # no model was built
    with pytest.raises(ValueError, match='multiples of the pad divisor'):
        export_detector(config, str(demo_checkpoint), 'onnx',
                        str(tmp_path / 'x.onnx'), size=(100, 128))


def test_untraceable_model_names_the_module(eager, monkeypatch):
    from plugins.mmdet_custom.apis.export import trace_detector
    neck = eager.detector.neck
    forward = neck.forward

    def data_dependent(inputs):
        if inputs[0].sum() > 0:  # control flow on a value: not traceable
            return forward(inputs)
        return forward(inputs)
    monkeypatch.setattr(neck, 'forward', data_dependent)
    with pytest.raises(ExportError, match=r'module detector\.neck '
                       r'\(DeformableCrossAttentionNeck\)'):
        trace_detector(eager, _image(SIZE))


@pytest.fixture(scope='module')
def grounding(repo_root, tmp_path_factory):
    """The demo GroundingDINO (tiny local BERT) with random weights:
    ``(config, checkpoint, cfg_options)``."""
    from tools.benchmark_inference import random_checkpoint
    from tools.make_tiny_bert import make_tiny_bert
    tmp = tmp_path_factory.mktemp('grounding')
    options = {'model.language_model.name': str(make_tiny_bert(tmp / 'bert'))}
    config = str(repo_root / GROUNDING)
    return config, random_checkpoint(config, tmp / 'gd.pth', options), options


def test_grounding_export_module_is_the_test_path(grounding):
    """With the prompt fixed (text features computed once, kept as
    buffers), the exported function predicts what GroundingDINO's own
    predict gives for that prompt."""
    from mmdet.structures import DetDataSample
    config, ckpt, options = grounding
    detector = init_detector(config, str(ckpt), cfg_options=options)
    module = DetectorExportModule(detector, texts=PROMPT).eval()
    assert module.text_embedded.shape[:2] == module.text_masks.shape[:2]
    rgb = _image(SIZE, seed=6)
    meta = dict(img_shape=SIZE, ori_shape=SIZE, scale_factor=(1.0, 1.0))
    data = detector.data_preprocessor(
        dict(inputs=[rgb[0].flip(0)],
             data_samples=[DetDataSample(metainfo=meta, text=tuple(NAMES),
                                         custom_entities=True)]))
    with torch.no_grad():
        want = detector.predict(data['inputs'], data['data_samples'],
                                rescale=False)[0].pred_instances
        got = module(rgb)
    assert set(want.labels.tolist()) <= {0, 1, 2}
    _assert_same_detections(got, [want.bboxes[None], want.scores[None],
                                  want.labels[None]], 'grounding predict')


# 194 s on the shared 2-core machine at load average ~8 (2026-12-08)
@pytest.mark.slow
def test_grounding_onnx_matches_eager(grounding, tmp_path):
    """GroundingDINO with its prompt fixed at export: ONNX Runtime
    reproduces eager PyTorch (--verify's comparison, and a second image)."""
    config, ckpt, options = grounding
    out = tmp_path / 'gd.onnx'
    meta = export_detector(config, str(ckpt), 'onnx', str(out), size=SIZE,
                           texts=PROMPT, cfg_options=options, verify=True)
    assert meta['verify']['ok'], meta['verify']
    assert meta['texts'] == NAMES and meta['model'] == 'GroundingDINO'
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert 'GridSample' not in ops
    session = onnx_session(str(out))
    eager = DetectorExportModule(
        init_detector(config, str(ckpt), cfg_options=options),
        texts=PROMPT).eval()
    image = _image(SIZE, seed=7)
    with torch.no_grad():
        want = eager(image)
    got = session.run(None, {'images': image.numpy()})
    _assert_same_detections(got, want, 'grounding onnx')
