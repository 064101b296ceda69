"""Predictions for image files, folders, globs and videos, written as a
JSON list of detections and as pictures (``tools/infer.py``)."""
import glob
import json
import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from plugins.prompt_learning.visualization import default_palette, overlay_mask

from .predictor import Predictor, detector_of

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
              '.mpeg', '.wmv')


@dataclass
class InputFile:
    """One input: ``kind`` is ``'image'`` or ``'video'``; ``name`` is what
    the records call it (relative to a folder input, else as given)."""
    path: str
    name: str
    kind: str


def _kind(path: str) -> Optional[str]:
    ext = osp.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        return 'video'
    if ext in IMAGE_EXTS:
        return 'image'
    return None


def collect_inputs(inputs: Sequence[str]) -> List[InputFile]:
    """Expand image/video files, folders (recursively, by extension) and
    glob patterns, in the given order (sorted within a folder or glob).

    A file named explicitly is read as an image unless its extension is a
    video's; folders and globs take only known image and video extensions.

    Raises:
        FileNotFoundError: an input is neither a file, a folder nor a glob
            matching a file (all such inputs named).
        ValueError: nothing to read at all.
    """
    found: List[InputFile] = []
    missing = []
    for given in inputs:
        if osp.isdir(given):
            for root, dirs, files in os.walk(given):
                dirs.sort()
                for name in sorted(files):
                    path = osp.join(root, name)
                    kind = _kind(path)
                    if kind:
                        rel = osp.relpath(path, given).replace(os.sep, '/')
                        found.append(InputFile(path, rel, kind))
        elif osp.isfile(given):
            found.append(InputFile(given, given, _kind(given) or 'image'))
        elif glob.has_magic(given):
            matches = [p for p in sorted(glob.glob(given, recursive=True))
                       if osp.isfile(p) and _kind(p)]
            if not matches:
                missing.append(f'{given} (glob matches no image or video)')
            found.extend(InputFile(p, p, _kind(p)) for p in matches)
        else:
            missing.append(f'{given} (no such file or folder)')
    if missing:
        raise FileNotFoundError('inputs not found: ' + '; '.join(missing))
    if not found:
        raise ValueError(f'no images ({", ".join(IMAGE_EXTS)}) or videos '
                         f'({", ".join(VIDEO_EXTS)}) in {list(inputs)}')
    return found


def _open_video(path: str):
    import cv2
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f'cannot open video {path} (unreadable or a codec '
                         'OpenCV lacks)')
    return capture


def _frames(path: str, every: int) -> Iterator[Tuple[int, np.ndarray]]:
    """``(frame index, BGR frame)`` of every ``every``-th frame."""
    capture = _open_video(path)
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if index % every == 0:
                yield index, frame
            index += 1
    finally:
        capture.release()


def _video_info(path: str) -> Tuple[float, int]:
    import cv2
    capture = cv2.VideoCapture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        return fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()


def class_palette(meta: Optional[dict], num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 RGB: the dataset's palette, else distinct colours."""
    palette = (meta or {}).get('palette')
    if palette is not None and len(palette) >= num_classes:
        return np.asarray(palette, dtype=np.uint8)[:max(num_classes, 1)]
    return default_palette(max(num_classes, 1) + 1)[1:]


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    scores: np.ndarray, class_names: Sequence[str],
                    palette: np.ndarray) -> np.ndarray:
    """Boxes with ``name score`` labels on an RGB image.

    Args:
        image (ndarray): ``(H, W, 3)`` uint8 RGB.
        boxes (ndarray): ``(N, 4)`` xyxy in image pixels.
        labels (ndarray): ``(N,)`` class indices.
        scores (ndarray): ``(N,)``.
        class_names: names the labels index.
        palette (ndarray): ``(K, 3)`` uint8 RGB.

    Returns:
        ndarray: ``(H, W, 3)`` uint8 RGB.
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(image.shape[:2]) / 200))
    for box, label, score in zip(boxes, labels, scores):
        color = tuple(int(c) for c in palette[int(label) % len(palette)])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        name = class_names[label] if label < len(class_names) else str(label)
        text = f'{name} {score:.2f}'
        tx1, ty1, tx2, ty2 = draw.textbbox((x1, y1), text)
        top = max(0.0, y1 - (ty2 - ty1) - 2)
        draw.rectangle((x1, top, x1 + (tx2 - tx1) + 3, top + (ty2 - ty1) + 2),
                       fill=color)
        draw.text((x1 + 1, top), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def _rgb(image: np.ndarray, channel_order_bgr: bool = True) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image[..., ::-1] if channel_order_bgr else image


@dataclass
class InferenceSummary:
    """What :func:`run_inference` did."""
    images: int = 0
    detections: int = 0
    seconds: float = 0.0
    failed: List[Tuple[str, str]] = field(default_factory=list)
    predictions: str = ''
    videos: List[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


class _Writer:
    """Turns predictions into records and pictures."""

    def __init__(self, predictor: Predictor, out_dir: str, score_thr: float,
                 draw: bool) -> None:
        self.predictor = predictor
        self.score_thr = score_thr
        self.draw = draw
        self.vis_dir = osp.join(out_dir, 'vis')
        self.mask_dir = osp.join(out_dir, 'masks')
        meta = getattr(detector_of(predictor.model), 'dataset_meta', None)
        names = predictor.class_names
        self.palette = class_palette(None if predictor.text else meta,
                                     len(names))
        self.records: List[dict] = []
        self.used_names: set = set()
        self.videos = {}
        #: frame rate of each annotated video (input rate / every)
        self.video_fps = {}

    def out_name(self, name: str, ext: str) -> str:
        """A file name under vis/ for input ``name`` (its folder layout kept
        when relative, unique)."""
        clean = name.replace('\\', '/')
        if osp.isabs(clean) or '..' in clean.split('/'):
            clean = osp.basename(clean)
        stem = osp.splitext(clean)[0]
        candidate, n = stem + ext, 1
        while candidate in self.used_names:
            candidate, n = f'{stem}_{n}{ext}', n + 1
        self.used_names.add(candidate)
        return candidate

    def add(self, item: InputFile, frame: Optional[int], image: np.ndarray,
            result) -> int:
        """Record one prediction (and draw it); returns detections kept."""
        base = dict(file_name=item.name)
        if frame is not None:
            base['frame'] = frame
        if 'pred_sem_seg' in result:
            picture = self._add_mask(item, frame, image, result, base)
            kept = 0
        else:
            kept, picture = self._add_boxes(image, result, base)
        if picture is not None:
            self._save(item, frame, picture)
        return kept

    def _add_boxes(self, image, result, base) -> Tuple[int, Optional[np.ndarray]]:
        inst = result.pred_instances
        keep = inst.scores >= self.score_thr
        boxes = inst.bboxes[keep].float().cpu().numpy()
        scores = inst.scores[keep].float().cpu().numpy()
        labels = inst.labels[keep].cpu().numpy()
        # the region-rescoring detector's fields, one value per box
        extra = {name: getattr(inst, k)[keep].float().cpu().numpy()
                 for k, name in (('raw_scores', 'raw_score'),
                                 ('semantic_multipliers',
                                  'semantic_multiplier')) if k in inst}
        names = self.predictor.class_names
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            x1, y1, x2, y2 = (float(v) for v in box)
            record = dict(base, bbox=[x1, y1, x2 - x1, y2 - y1],
                          score=float(score), category_id=int(label),
                          category_name=(names[label] if label < len(names)
                                         else str(int(label))))
            for key, values in extra.items():
                record[key] = float(values[i])
            self.records.append(record)
        picture = None
        if self.draw:
            picture = draw_detections(_rgb(image), boxes, labels, scores,
                                      names, self.palette)
        return len(boxes), picture

    def _add_mask(self, item, frame, image, result, base):
        mask = result.pred_sem_seg.sem_seg[0].cpu().numpy()
        names = self.predictor.class_names
        counts = np.bincount(mask.ravel(), minlength=len(names))
        record = dict(base, class_pixels={
            (names[k] if k < len(names) else str(k)): int(c)
            for k, c in enumerate(counts) if c})
        if frame is None:  # one mask file per image (not per video frame)
            os.makedirs(self.mask_dir, exist_ok=True)
            mask_name = self.out_name('masks/' + item.name, '.png')
            path = osp.join(osp.dirname(self.mask_dir), mask_name)
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(mask.astype(np.uint8)).save(path)
            record['mask_file'] = mask_name
        self.records.append(record)
        if not self.draw:
            return None
        rgb = _rgb(image)
        if mask.shape != rgb.shape[:2]:
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(
                (rgb.shape[1], rgb.shape[0]), Image.NEAREST))
        return overlay_mask(rgb, mask, self.palette if len(self.palette) else
                            default_palette(int(mask.max()) + 1))

    def _save(self, item: InputFile, frame: Optional[int],
              picture: np.ndarray) -> None:
        if frame is None:
            name = self.out_name(item.name, '.png')
            path = osp.join(self.vis_dir, name)
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(picture).save(path)
            return
        writer = self.videos.get(item.path)
        if writer is None:
            writer = self._open_video_writer(item, picture.shape)
            self.videos[item.path] = writer
        writer[0].write(np.ascontiguousarray(picture[..., ::-1]))

    def _open_video_writer(self, item: InputFile, shape):
        import cv2
        fps = self.video_fps.get(item.path, 25.0)
        os.makedirs(self.vis_dir, exist_ok=True)
        for ext, codec in (('.mp4', 'mp4v'), ('.avi', 'MJPG')):
            path = osp.join(self.vis_dir, self.out_name(item.name, ext))
            os.makedirs(osp.dirname(path), exist_ok=True)
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec),
                                     fps, (shape[1], shape[0]))
            if writer.isOpened():
                return writer, path
        raise RuntimeError(f'OpenCV cannot write a video for {item.path} '
                           '(neither mp4v nor MJPG)')

    def close(self) -> List[str]:
        paths = []
        for writer, path in self.videos.values():
            writer.release()
            paths.append(path)
        return paths


def _work(items: Sequence[InputFile], every: int, failed: list,
          needs_file: bool, tmp_dir: str):
    """``(item, frame or None, image path or BGR array)`` in order; videos
    that cannot be opened go to ``failed``."""
    written = 0
    for item in items:
        if item.kind == 'image':
            yield item, None, item.path
            continue
        try:
            for index, frame in _frames(item.path, every):
                if needs_file:  # the model re-reads the original from disk
                    os.makedirs(tmp_dir, exist_ok=True)
                    path = osp.join(tmp_dir, f'{written:08d}.png')
                    written += 1
                    Image.fromarray(frame[..., ::-1]).save(path)
                    yield item, index, path
                else:
                    yield item, index, frame
        except Exception as err:  # noqa: BLE001 -- reported, not fatal
            failed.append((item.name, f'{type(err).__name__}: {err}'))


def run_inference(model: torch.nn.Module,
                  inputs: Union[Sequence[str], Sequence[InputFile]],
                  out_dir: str,
                  batch_size: int = 1,
                  score_thr: float = 0.3,
                  texts: Union[str, Sequence[str], None] = None,
                  every: int = 1,
                  draw: bool = True,
                  progress: bool = True) -> InferenceSummary:
    """Predict every image and video frame of ``inputs``; write
    ``out_dir/predictions.json`` and pictures under ``out_dir/vis``.

    Detections become one record each: ``file_name``, ``frame`` (videos),
    ``bbox`` (COCO ``[x, y, w, h]`` in original-image pixels), ``score``,
    ``category_id`` (the model's label index) and ``category_name``; the
    region-rescoring detector adds ``raw_score`` and
    ``semantic_multiplier``. A semantic segmentor writes one record per
    image with ``class_pixels`` (and ``mask_file``, a PNG of class indices
    under ``out_dir/masks``) and mask overlays. Unreadable images and videos
    are skipped and listed in the summary.

    Args:
        model: from :func:`init_detector`.
        inputs: files, folders, globs (see :func:`collect_inputs`).
        out_dir (str): output folder (created).
        batch_size (int): images per forward pass; never changes a result.
        score_thr (float): keep detections scoring at least this.
        texts: class prompt of a text-prompted model (see
            :class:`Predictor`).
        every (int): keep every ``every``-th frame of a video.
        draw (bool): write pictures.
        progress (bool): show a progress bar (images per second).

    Returns:
        InferenceSummary
    """
    from tqdm import tqdm

    from ..models.detectors import RegionRescoringDetector
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if every < 1:
        raise ValueError(f'every must be >= 1, got {every}')
    items = [i if isinstance(i, InputFile) else None for i in inputs]
    if not all(items):
        items = collect_inputs([str(i) for i in inputs])
    predictor = Predictor(model, texts=texts)
    os.makedirs(out_dir, exist_ok=True)
    writer = _Writer(predictor, out_dir, score_thr, draw)
    total = 0
    for item in items:
        if item.kind == 'video':
            fps, count = _video_info(item.path)
            writer.video_fps[item.path] = fps / every
            total += -(-count // every)
        else:
            total += 1
    summary = InferenceSummary()
    needs_file = isinstance(detector_of(model), RegionRescoringDetector)
    tmp_dir = osp.join(out_dir, '.frames')
    bar = tqdm(total=total, unit='img', disable=not progress,
               desc='inference')
    start = time.perf_counter()

    def flush(pending):
        results = predictor.predict([p[4] for p in pending])
        for (item, frame, source, image, _), result in zip(pending, results):
            summary.detections += writer.add(item, frame, image, result)
            if needs_file and frame is not None:  # the temporary frame
                os.remove(source)
        summary.images += len(pending)
        bar.update(len(pending))

    pending = []
    for img_id, (item, frame, source) in enumerate(
            _work(items, every, summary.failed, needs_file, tmp_dir)):
        try:
            loaded = predictor.load(source, img_id)
            sample = predictor.prepare(loaded)
        except Exception as err:  # noqa: BLE001 -- reported, not fatal
            name = item.name if frame is None else f'{item.name}#{frame}'
            summary.failed.append((name, f'{type(err).__name__}: {err}'))
            bar.update(1)
            continue
        pending.append((item, frame, source, loaded['img'], sample))
        if len(pending) == batch_size:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    summary.seconds = time.perf_counter() - start
    bar.close()
    summary.videos = writer.close()
    if osp.isdir(tmp_dir):
        for name in os.listdir(tmp_dir):  # frames that failed to load
            os.remove(osp.join(tmp_dir, name))
        os.rmdir(tmp_dir)
    summary.predictions = osp.join(out_dir, 'predictions.json')
    with open(summary.predictions, 'w') as f:
        json.dump(writer.records, f, indent=1)
    return summary
