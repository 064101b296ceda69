"""Write pictures of semantic predictions during ``tools/test.py``."""
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook

from mmdet.registry import HOOKS
from plugins.prompt_learning.visualization import (default_palette,
                                                   draw_segmentation,
                                                   draw_similarity_maps,
                                                   save_png)


@HOOKS.register_module()
class SemSegVisualizationHook(Hook):
    """Save mask overlays and per-class similarity heatmaps as PNGs.

    For every ``interval``-th test image: ``<name>_overlay.png`` (image |
    ground truth | prediction, class colours blended in) and, when the model
    returns ``seg_logits`` (``(K, h, w)``, e.g.
    :class:`VPTTPTSemanticSegmentor`), ``<name>_heatmaps.png`` (one panel per
    class, the similarity upsampled to the image on a shared colour scale).
    Drop-in for mmdet's ``DetVisualizationHook`` under
    ``default_hooks.visualization``: ``tools/test.py --show-dir DIR`` sets
    ``draw=True`` and ``test_out_dir=DIR`` (written to
    ``work_dir/<timestamp>/DIR``).

    Args:
        draw (bool): write pictures at all. Defaults to False.
        interval (int): every n-th test batch. Defaults to 1.
        show (bool): accepted for the ``--show`` flag; windows are not
            opened (pictures are written instead).
        wait_time (float): accepted for ``--show``; unused.
        test_out_dir (str, optional): folder under the run's log dir.
            Defaults to ``'vis'``.
        alpha (float): blending weight of colours. Defaults to 0.5.
        heatmaps (bool): also write the heatmaps. Defaults to True.
        bgr_inputs (bool): the batch's ``inputs`` are BGR (mmcv loading).
            Defaults to True.
    """

    def __init__(self,
                 draw: bool = False,
                 interval: int = 1,
                 show: bool = False,
                 wait_time: float = 0.,
                 test_out_dir: Optional[str] = None,
                 alpha: float = 0.5,
                 heatmaps: bool = True,
                 bgr_inputs: bool = True) -> None:
        self.draw = draw
        self.interval = interval
        self.show = show
        self.wait_time = wait_time
        self.test_out_dir = test_out_dir or 'vis'
        self.alpha = alpha
        self.heatmaps = heatmaps
        self.bgr_inputs = bgr_inputs

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict = None,
                        outputs: Optional[Sequence] = None) -> None:
        if not self.draw or not outputs or batch_idx % self.interval:
            return
        out_dir = osp.join(runner.work_dir, runner.timestamp,
                           self.test_out_dir)
        os.makedirs(out_dir, exist_ok=True)
        meta = getattr(runner.test_evaluator, 'dataset_meta', None) or {}
        for i, sample in enumerate(outputs):
            image = self._image(data_batch['inputs'][i])
            self.write(sample, image, out_dir, meta.get('classes'),
                       meta.get('palette'))

    def _image(self, tensor: torch.Tensor) -> np.ndarray:
        image = tensor.detach().cpu()
        if self.bgr_inputs and image.shape[0] == 3:
            image = image.flip(0)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return image.permute(1, 2, 0).clamp(0, 255).byte().numpy()

    def write(self, sample, image: np.ndarray, out_dir: str,
              classes: Optional[Sequence[str]] = None,
              palette: Optional[Sequence[Sequence[int]]] = None) -> list:
        """Draw one sample's pictures; returns the written paths.

        Args:
            sample (DetDataSample): with ``pred_sem_seg`` (and optionally
                ``gt_sem_seg``, ``seg_logits``).
            image (ndarray): ``(H, W, 3)`` uint8 RGB at the prediction size.
            out_dir (str): existing folder.
            classes (Sequence[str], optional): names for the heatmap panels.
            palette (Sequence, optional): RGB per class (the dataset's);
                generated when missing or too short.
        """
        classes = tuple(classes or sample.metainfo.get('class_names') or ())
        pred = sample.pred_sem_seg.sem_seg[0].cpu().numpy()
        gt = sample.gt_sem_seg.sem_seg[0].cpu().numpy() \
            if 'gt_sem_seg' in sample else None
        num_classes = max(len(classes), int(pred.max()) + 1)
        if palette is None or len(palette) < num_classes:
            palette = default_palette(num_classes)
        palette = np.asarray(palette, dtype=np.uint8)
        name = str(sample.metainfo.get('img_id', sample.metainfo.get(
            'img_path', 'image')))
        name = osp.splitext(osp.basename(name))[0]
        paths = [osp.join(out_dir, f'{name}_overlay.png')]
        save_png(draw_segmentation(image, pred, gt, palette, self.alpha),
                 paths[0])
        if self.heatmaps and 'seg_logits' in sample:
            sims = sample.seg_logits.data.float()
            sims = F.interpolate(sims[None], size=image.shape[:2],
                                 mode='bilinear', align_corners=False)[0]
            names = classes or tuple(str(k) for k in range(len(sims)))
            paths.append(osp.join(out_dir, f'{name}_heatmaps.png'))
            save_png(draw_similarity_maps(image, sims.cpu().numpy(), names),
                     paths[1])
        return paths
