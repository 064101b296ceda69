"""mmengine model around :class:`~plugins.prompt_learning.VPTTPTSegmentor`,
so ``tools/train.py`` / ``tools/test.py`` train and evaluate it."""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import PixelData

from mmdet.registry import MODELS
from plugins.prompt_learning import VPTTPTSegmentor
from plugins.prompt_learning.losses import (dice_loss, flip_consistency_loss,
                                            upsample_to_masks)

ImageBatch = Union[torch.Tensor, List[torch.Tensor]]


@MODELS.register_module()
class VPTTPTSemanticSegmentor(BaseModel):
    """Semantic segmentation by prompt-tuned CLIP patch-text similarity.

    One CoOp prompt per class; the per-class cosine similarity maps
    ``(B, K, h, w)`` of :class:`VPTTPTSegmentor`, times a temperature, are
    the class logits.  Training upsamples them to each mask's size and
    minimises ``ce * CrossEntropy + dice * (1 - soft Dice)``, plus optionally
    ``consistency * (1 - cos)`` between the patch features of each image and
    of its mirror image (flipped back).  Prediction upsamples to the image and
    takes the argmax.  Only the prompts train; the CLIP weights stay frozen.

    Args:
        class_names (Sequence[str]): one per mask value, in order.
        prompt_texts (Sequence[str], optional): text of each class's prompt
            instead of its name (e.g. ``'prostate gland'``).
        segmentor (dict): keyword arguments of :class:`VPTTPTSegmentor`
            (``model_name``, ``pretrained``, ``num_visual_prompts``,
            ``num_text_prompts`` ...).
        temperature (float | str): logit scale; ``'clip'`` uses the CLIP
            model's ``exp(logit_scale)`` (100 for trained CLIP weights).
            Defaults to ``'clip'``.
        loss_weights (dict): ``ce``, ``dice`` and ``consistency`` weights.
            Defaults to ``dict(ce=1.0, dice=1.0, consistency=0.0)``.
        class_weight (Sequence[float], optional): cross-entropy class weights.
        ignore_index (int): mask value without loss. Defaults to 255.
        upsample_mode (str): interpolation of the maps to mask size.
            Defaults to ``'bilinear'``.
        data_preprocessor (dict): defaults to
            ``dict(type='ImageListDataPreprocessor', bgr_to_rgb=True)``.
        init_cfg (dict, optional): mmengine init config.

    Example:
        >>> model = MODELS.build(dict(
        ...     type='VPTTPTSemanticSegmentor',
        ...     class_names=['background', 'prostate']))
    """

    def __init__(self,
                 class_names: Sequence[str],
                 prompt_texts: Optional[Sequence[str]] = None,
                 segmentor: Optional[dict] = None,
                 temperature: Union[float, str] = 'clip',
                 loss_weights: Optional[Dict[str, float]] = None,
                 class_weight: Optional[Sequence[float]] = None,
                 ignore_index: int = 255,
                 upsample_mode: str = 'bilinear',
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImageListDataPreprocessor',
                                     bgr_to_rgb=True)
        if isinstance(data_preprocessor, dict):
            # mmdet's registry (not mmengine's, which BaseModel would use)
            # so that it builds with or without a Runner's default scope.
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.class_names = tuple(class_names)
        self.prompt_texts = tuple(prompt_texts or class_names)
        if len(self.prompt_texts) != len(self.class_names):
            raise ValueError(f'{len(self.prompt_texts)} prompt_texts for '
                             f'{len(self.class_names)} class_names')
        self.segmentor = VPTTPTSegmentor(**(segmentor or {}))
        if isinstance(temperature, str) and temperature != 'clip':
            raise ValueError(f"temperature {temperature!r}: expected a number "
                             "or 'clip'")
        self.temperature = temperature
        weights = dict(ce=1.0, dice=1.0, consistency=0.0)
        unknown = set(loss_weights or {}) - set(weights)
        if unknown:
            raise KeyError(f'loss_weights: unknown {sorted(unknown)}; '
                           f'expected {sorted(weights)}')
        weights.update(loss_weights or {})
        self.loss_weights = weights
        if class_weight is not None and len(class_weight) != len(class_names):
            raise ValueError(f'{len(class_weight)} class weights for '
                             f'{len(class_names)} classes')
        self.register_buffer(
            'class_weight',
            None if class_weight is None else torch.tensor(
                class_weight, dtype=torch.float32), persistent=False)
        self.ignore_index = ignore_index
        self.upsample_mode = upsample_mode

    # ---------------------------------------------------------------- common
    def _scale(self) -> torch.Tensor:
        if self.temperature == 'clip':
            return self.segmentor.logit_scale
        return torch.as_tensor(float(self.temperature))

    def _encode(self, inputs: ImageBatch) -> dict:
        seg = self.segmentor
        pixels = seg.preprocess(inputs, value_range='0-255')
        patch_features = seg.encode_patches(pixels)
        text_features = seg.encode_text(self.prompt_texts)
        maps = seg.similarity_maps(patch_features, text_features)
        h, w = seg.visual_tower.grid_size
        return dict(
            pixels=pixels,
            patch_features=patch_features,
            maps=maps.reshape(maps.shape[0], maps.shape[1], h, w))

    def forward(self,
                inputs: ImageBatch,
                data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._encode(inputs)['maps']
        raise RuntimeError(f'invalid mode {mode!r}: expected loss, predict or '
                           'tensor')

    # ------------------------------------------------------------------ loss
    def loss(self, inputs: ImageBatch, data_samples: list) -> dict:
        out = self._encode(inputs)
        logits = out['maps'] * self._scale()
        masks = [s.gt_sem_seg.sem_seg[0] for s in data_samples]
        pixel_logits, labels = upsample_to_masks(logits, masks,
                                                 self.upsample_mode)
        w = self.loss_weights
        losses = dict(
            loss_ce=w['ce'] * F.cross_entropy(
                pixel_logits, labels, weight=self.class_weight,
                ignore_index=self.ignore_index),
            loss_dice=w['dice'] * dice_loss(pixel_logits, labels,
                                            self.ignore_index))
        if w['consistency'] > 0:
            seg = self.segmentor
            flipped = seg.encode_patches(out['pixels'].flip(-1))
            losses['loss_consistency'] = w['consistency'] * \
                flip_consistency_loss(out['patch_features'], flipped,
                                      seg.visual_tower.grid_size)
        return losses

    # --------------------------------------------------------------- predict
    def predict(self, inputs: ImageBatch, data_samples: list) -> list:
        """Per-pixel predictions at each sample's ``img_shape``.

        Adds ``pred_sem_seg.sem_seg`` ``(1, H, W)`` (class indices) and
        ``seg_logits.data`` ``(K, h, w)`` (cosine similarity on the patch
        grid, for heatmaps) to every data sample.
        """
        maps = self._encode(inputs)['maps']
        scale = self._scale()
        for sample, sim in zip(data_samples, maps):
            # the mask's shape only when there is no img_shape (an image
            # without ground truth, e.g. tools/infer.py, has no mask)
            shape = sample.metainfo.get('img_shape')
            if shape is None:
                shape = sample.gt_sem_seg.shape
            height, width = shape[:2]
            logits = F.interpolate(
                sim[None] * scale, size=(height, width),
                mode=self.upsample_mode,
                **({'align_corners': False}
                   if self.upsample_mode in ('bilinear', 'bicubic') else {}))
            sample.pred_sem_seg = PixelData(
                sem_seg=logits[0].argmax(0, keepdim=True))
            sample.seg_logits = PixelData(data=sim.detach())
            sample.set_metainfo(dict(class_names=self.class_names))
        return data_samples
