"""A trained detector out of Python: ONNX and AOTInductor export.

The exported program is the detector's whole inference path as one function
of one tensor::

    images  float32 (N, 3, H, W), RGB, 0-255, already resized and padded
            to H x W (multiples of the pad divisor)
      -> boxes  float32 (N, K, 4)  xyxy in input pixels
         scores float32 (N, K)
         labels int64   (N, K)      K = the config's test_cfg.max_per_img

with the data preprocessor's normalisation inside.  The detector runs its
own ``predict`` (backbone, neck, transformer, head and the head's top-K
post-processing), traced once by ``torch.export``; then

* ``onnx``: our deformable attention op is rewritten into its gather form
  (:func:`plugins.ops.ms_deform_attn.gather.ms_deform_attn_gather`: standard
  ``Gather``/``MatMul`` ONNX operators, no ``GridSample``, no custom-op
  library) and the program is written by ``torch.onnx``'s exporter and
  checked with ``onnx.checker``;
* ``aoti``: the program is compiled by AOTInductor into a ``.pt2`` package
  with the op kept as our registered ``plugins::ms_deform_attn`` (our C++
  kernel runs inside the package).

A JSON file beside the output (``FILE.json``) records the input size, the
class names, the pad divisor and the outputs.
"""
import contextlib
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .predictor import parse_text_prompt

FORMATS = ('onnx', 'aoti')
MAX_SIDE = 2048  # the largest H or W a dynamic program accepts
INPUT_NAME = 'images'
OUTPUT_NAMES = ('boxes', 'scores', 'labels')


class ExportError(RuntimeError):
    """A model that cannot be exported; the message names the module (its
    dotted name in the detector and its class) where tracing failed."""


def _data_preprocessor_stats(detector: nn.Module
                             ) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    pre = detector.data_preprocessor
    mean = getattr(pre, 'mean', None)
    std = getattr(pre, 'std', None)
    if not getattr(pre, '_enable_normalize', mean is not None):
        mean = std = None
    # mmcv loads BGR and the preprocessor flips to RGB when bgr_to_rgb is
    # set; our input is RGB already, so only a model that wants BGR gets a
    # flip.
    wants_bgr = not getattr(pre, '_channel_conversion', True)
    return mean, std, wants_bgr


def pad_size_divisor(detector: nn.Module) -> int:
    """The data preprocessor's ``pad_size_divisor`` (1 when it has none)."""
    return int(getattr(detector.data_preprocessor, 'pad_size_divisor', 1) or 1)


def max_per_img(detector: nn.Module) -> int:
    """K, the number of detections per image (``test_cfg.max_per_img``)."""
    head = getattr(detector, 'bbox_head', None)
    cfg = getattr(head, 'test_cfg', None) or {}
    if 'max_per_img' not in cfg:
        raise ExportError(f'{type(detector).__name__}.bbox_head has no '
                          'test_cfg.max_per_img: the exported outputs need a '
                          'fixed number of detections per image')
    return int(cfg['max_per_img'])


class DetectorExportModule(nn.Module):
    """The detector's inference path as a function of an image tensor.

    Normalises like the data preprocessor, builds each image's metadata
    (``img_shape = batch_input_shape = (H, W)``, no rescale: boxes stay in
    input pixels) and runs the detector's own ``predict``.

    GroundingDINO gets its text prompt here, fixed for the exported
    program: the text encoder (tokenizer and BERT) runs once, eagerly, on
    the prompt, and its outputs (token embeddings, masks, position ids) are
    buffers of this module that ``language_model`` returns inside
    ``forward``; so the exported program holds no tokenizer and no BERT
    (the tokenizer is Python string code; the sub-sentence masks come from
    a loop over ``torch.nonzero`` of the token ids), only what the image
    path does with the text features.  Its ``predict`` stops after the
    head's: the per-detection label naming that follows
    (``if labels >= len(entity)``, a branch on each label's value) is for
    visualisation only, and the exported outputs are label indices.

    Args:
        detector (nn.Module): an mmdet DETR-family detector in eval mode
            (DINO, Deformable-DETR, GroundingDINO).
        texts (str | Sequence[str], optional): GroundingDINO's class prompt
            (``'a . b . c'`` or the class names; each name is one class, as
            ``tools/infer.py --texts`` prompts); None for closed-set
            detectors.

    Shapes:
        ``images (N, 3, H, W)`` float32 RGB 0-255 -> ``boxes (N, K, 4)``,
        ``scores (N, K)``, ``labels (N, K)`` int64.
    """

    def __init__(self, detector: nn.Module,
                 texts: Optional[Union[str, Sequence[str]]] = None) -> None:
        super().__init__()
        self.detector = detector
        mean, std, wants_bgr = _data_preprocessor_stats(detector)
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer('mean', mean.detach().clone().view(1, -1, 1, 1),
                                 persistent=False)
            self.register_buffer('std', std.detach().clone().view(1, -1, 1, 1),
                                 persistent=False)
        self.wants_bgr = wants_bgr
        # the class names, as tools/infer.py prompts (custom entities: each
        # name is one class, no noun-phrase parsing)
        self.texts = None if texts is None else parse_text_prompt(texts)
        self.num_dets = max_per_img(detector)
        self._text_keys: List[str] = []
        if self.texts is not None:
            self._fix_text(self.texts)

    def _fix_text(self, texts) -> None:
        """Run the text encoder on the prompt once and keep its outputs."""
        detector = self.detector
        if not hasattr(detector, 'language_model'):
            raise ExportError(f'{type(detector).__name__} takes no text '
                              'prompt (texts is only for GroundingDINO)')
        # what predict() derives from the prompt: the class -> token map,
        # the caption for the language model, the entities (string work
        # and, in create_positive_map_label_to_token, a torch.nonzero read
        # back into Python lists: data-dependent under torch.export)
        self._prompt = detector.get_tokens_positive_and_prompts(texts, True)
        caption = self._caption = self._prompt[1]
        with torch.no_grad():
            text_dict = detector.language_model([caption])
        for key, value in text_dict.items():
            if not isinstance(value, torch.Tensor):
                raise ExportError(f'{type(detector.language_model).__name__}'
                                  f' returned a non-tensor {key!r}')
            self.register_buffer(f'text_{key}', value.detach().clone(),
                                 persistent=False)
            self._text_keys.append(key)

    @contextlib.contextmanager
    def _fixed_text(self):
        """``language_model`` returns the stored text features and
        ``get_tokens_positive_and_prompts`` the stored prompt analysis."""
        lm = self.detector.language_model

        def fixed_prompt(texts, custom_entities, *args, **kwargs):
            if tuple(texts) != self.texts or not custom_entities:
                raise ExportError(
                    f'the export fixed the prompt {self.texts!r}; predict '
                    f'asked for {texts!r} (custom_entities='
                    f'{custom_entities})')
            return self._prompt

        def fixed(captions):
            if list(captions) != [self._caption] * len(captions):
                raise ExportError(
                    f'the export fixed the prompt {self._caption!r}; '
                    f'predict asked for {list(captions)!r}')
            n = len(captions)
            return {k: getattr(self, f'text_{k}').expand(
                n, *getattr(self, f'text_{k}').shape[1:])
                for k in self._text_keys}
        with _patched(lm, 'forward', fixed), _patched(
                self.detector, 'get_tokens_positive_and_prompts',
                fixed_prompt):
            yield

    def _data_samples(self, batch: int, height, width) -> list:
        from mmdet.structures import DetDataSample
        samples = []
        for _ in range(batch):
            meta = dict(img_shape=(height, width), ori_shape=(height, width),
                        batch_input_shape=(height, width),
                        pad_shape=(height, width), scale_factor=(1.0, 1.0))
            sample = DetDataSample()
            # set_field, not DetDataSample(metainfo=...): that deep-copies
            # the metainfo, and symbolic sizes cannot be deep-copied.
            for key, value in meta.items():
                sample.set_field(value, key, field_type='metainfo')
            if self.texts is not None:
                sample.text = self.texts
                sample.custom_entities = True
            samples.append(sample)
        return samples

    def forward(self, images: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N, _, H, W = images.shape
        x = images.flip(1) if self.wants_bgr else images
        if self.normalize:
            x = (x - self.mean) / self.std
        samples = self._data_samples(N, H, W)
        if self.texts is None:
            instances = [r.pred_instances for r in self.detector.predict(
                x, samples, rescale=False)]
        else:
            with self._fixed_text(), _stop_after_head_predict(
                    self.detector) as caught:
                try:
                    self.detector.predict(x, samples, rescale=False)
                except _HeadPredicted:
                    pass
            instances = caught[0]
        boxes = torch.stack([r.bboxes for r in instances])
        scores = torch.stack([r.scores for r in instances])
        labels = torch.stack([r.labels for r in instances])
        return boxes, scores, labels.long()


@contextlib.contextmanager
def _patched(owner, name: str, value):
    """``owner.name = value`` inside, the attribute as it was after (an
    instance attribute restored, a class attribute uncovered again)."""
    old = owner.__dict__.get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


class _HeadPredicted(Exception):
    """Raised after the head's predict (see _stop_after_head_predict)."""


@contextlib.contextmanager
def _stop_after_head_predict(detector: nn.Module):
    """Inside: ``detector.bbox_head.predict`` appends its results to the
    yielded list and raises :class:`_HeadPredicted`, so the caller's
    ``predict`` ends there (GroundingDINO: what follows names labels by
    their values, which does not trace)."""
    head = detector.bbox_head
    predict = head.predict
    caught: list = []

    def predict_then_stop(*args, **kwargs):
        caught.append(predict(*args, **kwargs))
        raise _HeadPredicted()
    with _patched(head, 'predict', predict_then_stop):
        yield caught


@contextlib.contextmanager
def _naming_failures(model: nn.Module):
    """Turn an exception raised inside ``model`` into an :class:`ExportError`
    naming the innermost submodule that was running."""
    stack: List[str] = []
    handles = []
    for name, module in model.named_modules():
        label = f'{name or "(top level)"} ({type(module).__name__})'

        def push(mod, args, label=label):
            stack.append(label)

        def pop(mod, args, out):
            if stack:
                stack.pop()
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    try:
        yield
    except ExportError:
        raise
    except Exception as err:
        where = stack[-1] if stack else 'outside any submodule (the ' \
            'export wrapper or the detector\'s predict glue)'
        raise ExportError(f'cannot export {type(model).__name__}: tracing '
                          f'failed in module {where}: '
                          f'{type(err).__name__}: {_short(err)}') from err
    finally:
        for handle in handles:
            handle.remove()


def _short(err: Exception, limit: int = 1500) -> str:
    """The gist of a (possibly huge) tracing error: its first lines and the
    user-code line torch.export blames."""
    text = str(err)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = ' '.join(lines[:2])
    blame = ''
    if 'The following call raised this error:' in text:
        tail = text.split('The following call raised this error:', 1)[1]
        blame = ' | raised at: ' + ' '.join(
            ln.strip() for ln in tail.strip().splitlines()[:2])
    return (head[:limit] + blame)


@contextlib.contextmanager
def _export_settings(model: nn.Module):
    """Switch off what has no place in a static graph, for the trace only:
    the backbones' NaN/Inf input check (``check_finite``, a data-dependent
    branch that raises)."""
    # the backbones keep their tower unregistered (attach_tower), so look
    # at each module's `tower` too
    owners = list(model.modules())
    owners += [m.tower for m in owners
               if isinstance(getattr(m, 'tower', None), nn.Module)]
    changed = [m for m in owners
               if getattr(m, 'check_finite', False) is True]
    for m in changed:
        m.check_finite = False
    try:
        yield
    finally:
        for m in changed:
            m.check_finite = True


def _shape_as_tensor(tensor: torch.Tensor) -> torch.Tensor:
    # torch._shape_as_tensor writes sizes into memory, which fake tensors do
    # not have; torch.tensor of (symbolic) ints traces to scalar_tensor +
    # stack, i.e. the same values computed in the graph.
    return torch.tensor(tuple(tensor.shape), dtype=torch.long,
                        device=tensor.device)


@contextlib.contextmanager
def _traceable_detr(detector: nn.Module):
    """Let mmdet 3.3's DETR family trace with torch.export, for the trace
    only, without changing what it computes.

    mmdet builds ``spatial_shapes`` (the levels' ``(H, W)``) as a tensor with
    ``torch._shape_as_tensor`` and later iterates over that tensor to get
    ``H`` and ``W`` back as loop bounds (``torch.linspace(..., H)``) in
    ``DeformableDetrTransformerEncoder.get_encoder_reference_points`` and
    ``DeformableDETR.gen_encoder_output_proposals``: reading sizes back from
    a tensor's values is data-dependent, which ``torch.export`` cannot
    trace.  Here the two functions get the same sizes as Python (or
    symbolic) ints, recorded from the feature maps in ``pre_transformer``,
    and ``torch._shape_as_tensor`` is computed in the graph.
    """
    sizes: List[tuple] = []
    stack = contextlib.ExitStack()

    def patch(owner, name, fn):
        stack.enter_context(_patched(owner, name, fn))

    if hasattr(detector, 'pre_transformer'):
        pre_transformer = detector.pre_transformer

        def recording_pre_transformer(mlvl_feats, *args, **kwargs):
            sizes[:] = [tuple(f.shape[-2:]) for f in mlvl_feats]
            return pre_transformer(mlvl_feats, *args, **kwargs)
        patch(detector, 'pre_transformer', recording_pre_transformer)
    if hasattr(detector, 'gen_encoder_output_proposals'):
        proposals = detector.gen_encoder_output_proposals

        def gen_encoder_output_proposals(memory, memory_mask, spatial_shapes):
            return proposals(memory, memory_mask, list(sizes))
        patch(detector, 'gen_encoder_output_proposals',
              gen_encoder_output_proposals)
    encoder = getattr(detector, 'encoder', None)
    if hasattr(encoder, 'get_encoder_reference_points'):
        reference_points = encoder.get_encoder_reference_points

        def get_encoder_reference_points(spatial_shapes, valid_ratios,
                                         device):
            return reference_points(list(sizes), valid_ratios, device)
        patch(encoder, 'get_encoder_reference_points',
              get_encoder_reference_points)
    patch(torch, '_shape_as_tensor', _shape_as_tensor)
    with stack:
        yield


_MISSING = object()


def _dynamic_shapes(divisor: int, low: int, max_side: int) -> dict:
    # H and W are multiples of the pad divisor; their factors are the
    # free symbols.
    from torch.export import Dim
    hmul = Dim('h_blocks', min=low // divisor, max=max_side // divisor)
    wmul = Dim('w_blocks', min=low // divisor, max=max_side // divisor)
    return {'images': {2: divisor * hmul, 3: divisor * wmul}}


def min_dynamic_side(detector: nn.Module, divisor: int,
                     limit: int = 4096) -> int:
    """The smallest side (a multiple of ``divisor``) at which every feature
    level of ``detector`` is at least 2 pixels.

    torch.export specialises sizes of 1 (they may broadcast): a program
    traced with dynamic H/W assumes every level is at least 2 wide, so that
    is the smallest input it accepts."""
    side = divisor
    while side <= limit:
        with torch.no_grad():
            feats = detector.extract_feat(torch.zeros(1, 3, side, side))
        if min(min(f.shape[-2:]) for f in feats) >= 2:
            return side
        side += divisor
    raise ExportError(f'no input side up to {limit} gives feature maps of '
                      'at least 2x2')


def trace_detector(module: DetectorExportModule,
                   example: torch.Tensor,
                   dynamic: bool = False,
                   max_side: int = None) -> torch.export.ExportedProgram:
    """``torch.export`` the module at the example's shape.

    Args:
        module (DetectorExportModule): the wrapped detector.
        example (Tensor): ``(N, 3, H, W)`` example input.
        dynamic (bool): make H and W symbolic (multiples of the pad
            divisor, from :func:`min_dynamic_side` up to ``max_side``; the
            example is enlarged to the minimum if smaller). Default: False.
        max_side (int): the largest side a dynamic program accepts.
            Default: ``MAX_SIDE`` (2048).

    Raises:
        ExportError: tracing failed; names the module.
    """
    from plugins.ops.ms_deform_attn import loader
    if not loader.load('cpu'):
        raise ExportError('the compiled plugins::ms_deform_attn op is '
                          'needed to export (the exported program calls '
                          f'it): {loader.status("cpu")}')
    dynamic_shapes = None
    if dynamic:
        divisor = pad_size_divisor(module.detector)
        low = min_dynamic_side(module.detector, divisor)
        max_side = max_side or MAX_SIDE
        H, W = (max(s, low) for s in example.shape[-2:])
        if (H, W) != tuple(example.shape[-2:]):
            example = torch.rand(example.shape[0], 3, H, W) * 255
        dynamic_shapes = _dynamic_shapes(divisor, low, max_side)
    with torch.no_grad(), _export_settings(module), \
            _traceable_detr(module.detector), _naming_failures(module):
        program = torch.export.export(module, (example,),
                                      dynamic_shapes=dynamic_shapes,
                                      strict=False)
    if dynamic:
        _check_other_size(program, example, divisor)
    return program


def _check_other_size(program, example: torch.Tensor, divisor: int) -> None:
    """Run a dynamic program at another size: torch.export may have kept
    guards that pin H/W to the example (runtime asserts), which would make
    the program fail (or, in ONNX, silently misbehave) at other sizes."""
    H, W = example.shape[-2:]
    other = torch.rand(example.shape[0], 3, H + divisor, W + 2 * divisor)
    try:
        with torch.no_grad():
            program.module()(other * 255)
    except Exception as err:  # noqa: BLE001 -- reported with its cause
        raise ExportError(
            'dynamic H/W: the traced program only runs at the traced size '
            f'{H}x{W}, not at {H + divisor}x{W + 2 * divisor} '
            f'({type(err).__name__}: {_short(err, 300)}); export a fixed '
            'size instead (no --dynamic), see docs/inference.md') from err


def to_onnx(program: torch.export.ExportedProgram, out: str,
            opset: int = 18) -> None:
    """Write an exported detector as ONNX with our op in its gather form.

    Raises:
        ExportError: the program still holds a ``plugins::`` op after the
            rewrite, a ``GridSample`` node, or fails ``onnx.checker``.
    """
    import onnx

    from plugins.ops.ms_deform_attn.export import export_decompositions
    table = torch.export.default_decompositions()
    table.update(export_decompositions())
    program = program.run_decompositions(table)
    left = sorted({str(n.target) for n in program.graph.nodes
                   if n.op == 'call_function'
                   and str(n.target).startswith('plugins.')})
    if left:
        raise ExportError(f'custom ops left after the gather rewrite: {left}')
    onnx_program = torch.onnx.export(program, dynamo=True,
                                     input_names=[INPUT_NAME],
                                     output_names=list(OUTPUT_NAMES),
                                     opset_version=opset, verbose=False)
    onnx_program.save(out)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    ops = {(n.domain or 'ai.onnx', n.op_type) for n in _all_nodes(model.graph)}
    custom = sorted(d for d, _ in ops if d not in ('ai.onnx', ''))
    if custom or any(op == 'GridSample' for _, op in ops):
        raise ExportError(f'{out}: non-standard ops in the ONNX graph: '
                          f'{sorted(ops)}')


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def to_aoti(program: torch.export.ExportedProgram, out: str) -> None:
    """Compile an exported detector with AOTInductor into a ``.pt2``
    package; ``plugins::ms_deform_attn`` stays our op (our kernel)."""
    from torch._inductor import aoti_compile_and_package
    ops = {str(n.target) for n in program.graph.nodes
           if n.op == 'call_function'}
    if 'plugins.ms_deform_attn.default' not in ops:
        raise ExportError('the traced program does not call '
                          'plugins::ms_deform_attn (was the deformable '
                          'attention switched to our op?)')
    aoti_compile_and_package(program, package_path=out)


#: Agreement an exported program must reach with eager PyTorch (issue 24):
#: boxes in input pixels, scores absolute.
BOX_TOL, SCORE_TOL = 1e-2, 1e-4


def _match_one(wb, ws, wl, gb, gs, gl, box_tol, score_tol) -> List[int]:
    """A one-to-one assignment of eager detections (``w*``) to exported ones
    (``g*``): ``partner[i] = j`` or -1.  Allowed pairs have the same label,
    boxes within ``box_tol`` and scores within ``score_tol``; among them
    the assignment of least total (normalised) difference, so that the
    reported differences are those of the same detection where several
    are alike (a random-weight DINO gives many queries the same clipped
    box and label)."""
    from scipy.optimize import linear_sum_assignment
    score_gap = (ws[:, None] - gs[None, :]).abs()
    box_gap = (wb[:, None, :] - gb[None, :, :]).abs().amax(-1)
    allowed = (score_gap <= score_tol) & (box_gap <= box_tol) & \
        (wl[:, None] == gl[None, :])
    cost = score_gap / score_tol + box_gap / box_tol
    forbidden = 10.0 * (len(ws) + 1) * 2  # more than any allowed total
    cost = torch.where(allowed, cost, torch.full_like(cost, forbidden))
    rows, cols = linear_sum_assignment(cost.numpy())
    partner = [-1] * len(ws)
    for i, j in zip(rows.tolist(), cols.tolist()):
        if allowed[i, j]:
            partner[i] = j
    return partner


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.from_numpy(np.asarray(x))


def compare_detections(got: Sequence, want: Sequence,
                       box_tol: float = BOX_TOL,
                       score_tol: float = SCORE_TOL) -> Dict:
    """Whether an exported program reproduces eager PyTorch's top-K.

    ``got`` and ``want`` are ``(boxes (N, K, 4), scores (N, K), labels (N,
    K))`` (tensors or arrays), each image's K detections sorted by score.
    A detection is its (box, label, score).  Position by position, two
    runtimes may order near-tied scores differently (a random-weight DINO
    has many): each eager detection is therefore matched one-to-one to an
    exported one with the same label, box within ``box_tol`` px and score
    within ``score_tol``; and position by position the scores must agree
    within ``score_tol`` too, so that a match at another position can only
    swap detections whose scores lie within ``score_tol`` of each other.  Unmatched detections are allowed only at
    the top-K boundary: scores within ``score_tol`` of the other side's
    K-th score (a near-tie at rank K puts a different detection in the
    list).

    Returns:
        dict: ``ok``; ``problems`` (why not, first few); ``max_box_px`` and
        ``max_score`` over matched pairs; ``max_score_by_position``;
        ``labels_equal_by_position`` / ``detections``; ``matched``;
        ``moved`` (matched at another position); ``boundary_unmatched``.
    """
    boxes, scores, labels = (_as_tensor(x) for x in got)
    wboxes, wscores, wlabels = (_as_tensor(x) for x in want)
    problems: List[str] = []
    if boxes.shape != wboxes.shape or scores.shape != wscores.shape or \
            labels.shape != wlabels.shape:
        return dict(ok=False, problems=[
            f'shapes differ: exported boxes/scores/labels '
            f'{tuple(boxes.shape)}/{tuple(scores.shape)}/'
            f'{tuple(labels.shape)}, eager {tuple(wboxes.shape)}/'
            f'{tuple(wscores.shape)}/{tuple(wlabels.shape)}'])
    if labels.dtype != torch.int64:
        problems.append(f'labels are {labels.dtype}, not int64')
    boxes, scores, wboxes, wscores = (t.double() for t in
                                      (boxes, scores, wboxes, wscores))
    report = dict(detections=int(scores.numel()), matched=0, moved=0,
                  boundary_unmatched=0, max_box_px=0.0, max_score=0.0,
                  max_score_by_position=float(
                      (scores - wscores).abs().max()) if scores.numel()
                  else 0.0,
                  labels_equal_by_position=int((labels == wlabels).sum()))
    if report['max_score_by_position'] > score_tol:
        # sorted lists that match within score_tol also agree position by
        # position: a larger gap is a detection moved past scores that are
        # not tied with its own (or a list not sorted by score)
        n, k = divmod(int((scores - wscores).abs().argmax()), scores.shape[1])
        problems.append(f'image {n}, position {k}: score {float(scores[n, k]):.6f}, '
                        f'eager {float(wscores[n, k]):.6f} (more than '
                        f'{score_tol} apart)')
    for n in range(scores.shape[0]):
        partner = _match_one(wboxes[n], wscores[n], wlabels[n], boxes[n],
                             scores[n], labels[n], box_tol, score_tol)
        taken = {j for j in partner if j >= 0}
        # An eager detection missing from the exported top-K scored at most
        # the exported K-th score there (and vice versa), so within
        # score_tol of it.
        kth = dict(eager=float(scores[n, -1]), exported=float(wscores[n, -1]))
        for i, j in enumerate(partner):
            if j < 0:
                continue
            report['matched'] += 1
            report['moved'] += int(i != j)
            report['max_box_px'] = max(report['max_box_px'], float(
                (boxes[n, j] - wboxes[n, i]).abs().max()))
            report['max_score'] = max(report['max_score'], float(
                (scores[n, j] - wscores[n, i]).abs()))
        sides = (('eager', wboxes, wscores, wlabels,
                  [i for i, j in enumerate(partner) if j < 0]),
                 ('exported', boxes, scores, labels,
                  [j for j in range(scores.shape[1]) if j not in taken]))
        for side, b, sc, lb, unmatched in sides:
            for k in unmatched:
                score = float(sc[n, k])
                if score - kth[side] <= score_tol:
                    report['boundary_unmatched'] += 1
                    continue
                problems.append(
                    f'image {n}: {side} detection #{k} (score {score:.6f}, '
                    f'label {int(lb[n, k])}, box '
                    f'{[round(v, 3) for v in b[n, k].tolist()]}) has no '
                    f'counterpart with the same label, a box within '
                    f'{box_tol} px and a score within {score_tol}, and is '
                    f'not at the top-K boundary (the other side\'s K-th '
                    f'score is {kth[side]:.6f})')
    report['ok'] = not problems
    report['problems'] = problems[:5] + (
        [f'... {len(problems) - 5} more'] if len(problems) > 5 else [])
    return report


def default_input_size(cfg, divisor: int) -> Tuple[int, int]:
    """The largest ``(H, W)`` the config's test pipeline produces (its
    ``Resize`` scale, ``(w, h)`` in mmdet), padded up to ``divisor``."""
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get(
        'pipeline') or cfg.get('test_pipeline') or []
    for step in pipeline:
        if step.get('type') in ('Resize', 'FixScaleResize') and 'scale' in step:
            w, h = step['scale']
            return (_round_up(h, divisor), _round_up(w, divisor))
    raise ValueError(f'{cfg.filename}: no Resize scale in the test pipeline; '
                     'pass the input size (--size H W)')


def _round_up(x: int, divisor: int) -> int:
    return -(-int(x) // divisor) * divisor


def export_detector(config: str,
                    checkpoint: str,
                    fmt: str,
                    out: str,
                    size: Optional[Tuple[int, int]] = None,
                    dynamic: bool = False,
                    batch_size: int = 1,
                    texts: Optional[str] = None,
                    cfg_options: Optional[dict] = None,
                    allow_partial: bool = False,
                    verify: bool = False,
                    verify_seed: int = 0) -> Dict:
    """Export a trained detector (config + checkpoint) to ONNX or AOTI.

    Args:
        config (str): config file.
        checkpoint (str): trained weights.
        fmt (str): ``'onnx'`` or ``'aoti'``.
        out (str): output file (``.onnx`` / ``.pt2``); ``out + '.json'``
            gets the metadata.
        size (tuple[int, int], optional): ``(H, W)`` of the example input;
            multiples of the pad divisor. Default: the test pipeline's
            resize scale, padded.
        dynamic (bool): symbolic H and W. Default: False.
        batch_size (int): N of the exported program (fixed). Default: 1.
        texts (str, optional): GroundingDINO's prompt (default: the class
            names).
        cfg_options (dict, optional): config overrides.
        allow_partial (bool): see :func:`init_detector`.
        verify (bool): run the written file (ONNX Runtime, or the package
            loaded by ``torch._inductor.aoti_load_package``) and eager
            PyTorch on one random image and compare them
            (:func:`compare_detections`); the report goes into the
            metadata as ``verify``. Default: False.
        verify_seed (int): seed of that image. Default: 0.

    Returns:
        dict: the metadata written to the JSON file.

    Raises:
        ValueError: unknown format, or a size that is not a multiple of the
            pad divisor.
        FileNotFoundError: config or checkpoint missing (before any work).
        ExportError: the model cannot be traced (names the module).
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; choose one of '
                         f'{", ".join(FORMATS)}')
    for what, path in (('config', config), ('checkpoint', checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} not found: {path}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    from .inference import init_detector
    detector = init_detector(config, checkpoint, device='cpu',
                             cfg_options=cfg_options,
                             allow_partial=allow_partial)
    divisor = pad_size_divisor(detector)
    if size is None:
        size = default_input_size(detector.cfg, divisor)
    size = (int(size[0]), int(size[1]))
    if size[0] % divisor or size[1] % divisor:
        raise ValueError(f'--size {size[0]} {size[1]}: H and W must be '
                         f'multiples of the pad divisor ({divisor})')
    # init_detector sets dataset_meta (the test dataset's classes first)
    classes = list((detector.dataset_meta or {}).get('classes') or ())
    if texts is None and _is_grounding(detector):
        if not classes:
            raise ValueError(f'{config}: GroundingDINO needs a text prompt '
                             '(--texts) or class names in the config')
        texts = ' . '.join(classes)
    module = DetectorExportModule(detector, texts=texts).eval()
    example = torch.rand(batch_size, 3, *size) * 255
    if verify:  # eager first: nothing of the trace may touch it
        image = verify_image(batch_size, size, verify_seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            want = module(image)
        t_eager = time.perf_counter() - t0
    t0 = time.perf_counter()
    program = trace_detector(module, example, dynamic=dynamic)
    t_trace = time.perf_counter() - t0
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    if fmt == 'onnx':
        to_onnx(program, out)
    else:
        to_aoti(program, out)
    t_write = time.perf_counter() - t0
    meta = dict(
        format=fmt,
        file=osp.basename(out),
        config=osp.abspath(config),
        checkpoint=osp.abspath(checkpoint),
        model=type(detector).__name__,
        input=dict(name=INPUT_NAME, shape=[batch_size, 3, *size],
                   dtype='float32', channels='RGB', value_range=[0, 255],
                   dynamic_hw=(dict(min=min_dynamic_side(detector, divisor),
                                    max=MAX_SIDE, multiple_of=divisor)
                               if dynamic else False),
                   note='resized and padded to H x W; the whole input is '
                        'treated as image (no padding mask)'),
        size=list(size),
        pad_size_divisor=divisor,
        outputs=dict(boxes='float32 (N, K, 4) xyxy, input pixels',
                     scores='float32 (N, K)', labels='int64 (N, K)'),
        max_per_img=module.num_dets,
        class_names=classes,
        texts=None if module.texts is None else list(module.texts),
        torch=torch.__version__,
        seconds=dict(trace=round(t_trace, 1), write=round(t_write, 1)),
        load_average=_load_average())
    if verify:
        t0 = time.perf_counter()
        got = run_exported(out, fmt, image)
        meta['verify'] = dict(
            compare_detections(got, want), seed=verify_seed,
            box_tol=BOX_TOL, score_tol=SCORE_TOL,
            seconds=dict(eager=round(t_eager, 2),
                         exported_load_and_run=round(
                             time.perf_counter() - t0, 2)))
    with open(out + '.json', 'w') as f:
        json.dump(meta, f, indent=2)
    return meta


def verify_image(batch_size: int, size: Sequence[int],
                 seed: int = 0) -> torch.Tensor:
    """The ``(N, 3, H, W)`` float32 0-255 image that ``verify`` runs."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, *size, generator=g) * 255


def onnx_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for an exported detector, as
    ``--verify``, the tests and ``tools/benchmark_inference.py`` run it.

    Graph optimisations at ``ORT_ENABLE_EXTENDED`` (every fusion), not the
    default ``ORT_ENABLE_ALL``: on the ViT-B/16 DINO at 512x512 the extra
    layout rewrites of ``ALL`` moved one of 300 top-K scores by 1.7e-3
    (a detection near the K-th score then dropped out), while
    ``EXTENDED``, ``BASIC`` and no optimisation reproduce eager PyTorch's
    300 detections (docs/inference.md, "The full ViT-B/16 config").

    Args:
        path (str): the ``.onnx`` file.
        threads (int, optional): intra-op threads (inter-op: 1). Default:
            ONNX Runtime's.
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(path), options, providers=['CPUExecutionProvider'])


def run_exported(path: str, fmt: str, images: torch.Tensor) -> list:
    """Run an exported file on ``images``: ONNX in ONNX Runtime (CPU, see
    :func:`onnx_session`), a ``.pt2`` package loaded by
    ``torch._inductor.aoti_load_package`` (what a deployment does after
    ``import plugins.ops``)."""
    if fmt == 'onnx':
        return onnx_session(path).run(None, {INPUT_NAME: images.numpy()})
    import plugins.ops  # noqa: F401  (the op's schema)
    runner = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        return runner(images)


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 1) for x in os.getloadavg()]
    except OSError:
        return None


def _is_grounding(detector: nn.Module) -> bool:
    return hasattr(detector, 'language_model')
