"""Zero-shot scoring of candidate regions against positive/negative prompts."""
import os
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .head import head_type, logit_params, prompt_probs
from .masking import STRATEGIES, apply_strategy, crop_box
from .multiplier import MultiplierRule
from .prompts import PromptSource, load_prompts

#: Fields of a region record, in output order.
RECORD_FIELDS = ('s_pos', 's_neg', 's_pos_text', 's_neg_text', 'p_pos_sum',
                 'p_neg_sum', 'semantic_multiplier')


def _first(output):
    """Global features of an encoder output (ConceptCLIP returns tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def load_image(
        image: Union[str, os.PathLike, Image.Image, np.ndarray]) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from a path, PIL image or array."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.dtype != np.uint8 or image.shape[2] != 3:
            raise ValueError('image array must be uint8 (H, W, 3), got '
                             f'{image.dtype} {image.shape}')
        return image
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            return np.asarray(im.convert('RGB'))
    return np.asarray(image.convert('RGB'))


class RegionScorer:
    """Score regions of an image with a CLIP-family model.

    Each region (a box, optionally a mask) is cropped, its mask applied by
    ``strategy`` (see :mod:`plugins.scoring.masking`), preprocessed and
    encoded in batches; its features are compared with the positive and
    negative prompt features (computed once per prompt set and cached).

    The head comes from the model (:func:`plugins.scoring.head.head_type`):
    CLIP-style models give ``softmax(logit_scale.exp() * img @ txt.T)`` over
    all prompts, and ``p_pos_sum`` / ``p_neg_sum`` are sums of those
    probabilities; models with a ``logit_bias`` (SigLIP, ConceptCLIP) give
    independent ``sigmoid(logit_scale.exp() * img @ txt.T + logit_bias)``
    per prompt, and the sums are noisy-ORs ``1 - prod(1 - p)`` (the
    probability that at least one prompt matches; a plain sum of
    independent sigmoids is not a probability and could exceed 1).

    Args:
        model (nn.Module): has ``encode_image(x)``, ``encode_text(tokens)``
            (tensors, or tuples whose first item is the global feature) and
            ``logit_scale`` (log of the scale), optionally ``logit_bias``.
        tokenizer (callable): ``list[str] -> LongTensor (T, L)`` (or a
            mapping with ``input_ids``).
        preprocess (callable): PIL image -> ``(3, S, S)`` tensor.
        positive_prompts: see :func:`plugins.scoring.load_prompts`.
            Default: ``'coco80'``.
        negative_prompts: Default: ``'background'``.
        strategy (str): ``'gray'``, ``'raw'`` or ``'soft'``. Default:
            ``'gray'``.
        soft_alpha (float): gray weight outside the mask for ``'soft'``.
            Default: 0.4.
        batch_size (int): crops per ``encode_image`` call. Default: 32.
        multiplier (dict, optional): overrides of
            :class:`plugins.scoring.MultiplierRule`.

    Example:
        >>> from plugins.models import build_open_clip
        >>> model, preprocess, tokenizer = build_open_clip('ViT-Tiny-16-test')
        >>> scorer = RegionScorer(model, tokenizer, preprocess,
        ...                       ['a cat'], ['sky'])
        >>> image = np.zeros((64, 64, 3), np.uint8)
        >>> records = scorer.score(image, [[0, 0, 32, 32]])
        >>> sorted(records[0])[:2]
        ['p_neg_sum', 'p_pos_sum']
    """

    def __init__(self,
                 model: nn.Module,
                 tokenizer: Callable,
                 preprocess: Callable,
                 positive_prompts: PromptSource = 'coco80',
                 negative_prompts: PromptSource = 'background',
                 strategy: str = 'gray',
                 soft_alpha: float = 0.4,
                 batch_size: int = 32,
                 multiplier: Optional[dict] = None):
        if strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy '{strategy}' (known: {STRATEGIES})")
        if batch_size < 1:
            raise ValueError(f'batch_size ({batch_size}) must be >= 1')
        if tokenizer is None:
            raise ValueError('RegionScorer needs a tokenizer (got None)')
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.strategy = strategy
        self.soft_alpha = float(soft_alpha)
        self.batch_size = int(batch_size)
        self.rule = MultiplierRule(**(multiplier or {}))
        self.head = head_type(model)
        self._text_cache: Dict[Tuple[str, ...], torch.Tensor] = {}
        self.set_prompts(positive_prompts, negative_prompts)

    # prompts -------------------------------------------------------------
    def set_prompts(self, positive_prompts: PromptSource,
                    negative_prompts: PromptSource) -> None:
        """Switch prompt sets (text features come from the cache if seen)."""
        self.positive_prompts = load_prompts(positive_prompts)
        self.negative_prompts = load_prompts(negative_prompts)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """``(P + N, D)`` L2-normalised features of the positive then the
        negative prompts; encoded once per prompt set, then cached."""
        key = tuple(self.positive_prompts) + ('\0', ) + tuple(
            self.negative_prompts)
        feats = self._text_cache.get(key)
        if feats is None or feats.device != self.device:
            tokens = self.tokenizer(self.positive_prompts +
                                    self.negative_prompts)
            if isinstance(tokens, Mapping):
                tokens = tokens['input_ids']
            feats = _first(self.model.encode_text(tokens.to(self.device)))
            feats = F.normalize(feats.float(), dim=-1)
            self._text_cache[key] = feats
        return feats

    # images --------------------------------------------------------------
    def prepare_crops(
        self,
        image,
        boxes: Sequence[Sequence[float]],
        masks: Optional[Sequence[Optional[np.ndarray]]] = None
    ) -> List[np.ndarray]:
        """Cropped, masked uint8 ``(h, w, 3)`` arrays, one per box.

        Args:
            image: path, PIL image or uint8 ``(H, W, 3)`` array.
            boxes: ``[x1, y1, x2, y2]`` per region, in pixels.
            masks: bool ``(H, W)`` per region (or None entries).
        """
        image = load_image(image)
        if masks is not None and len(masks) != len(boxes):
            raise ValueError(f'{len(masks)} masks for {len(boxes)} boxes')
        crops = []
        for i, box in enumerate(boxes):
            mask = None if masks is None else masks[i]
            crop, crop_mask = crop_box(image, box, mask)
            crops.append(
                apply_strategy(crop, crop_mask, self.strategy,
                               self.soft_alpha))
        return crops

    @torch.no_grad()
    def encode_crops(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, D)`` L2-normalised image features, ``batch_size`` at a
        time."""
        feats = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([
                self.preprocess(Image.fromarray(c))
                for c in crops[start:start + self.batch_size]
            ]).to(self.device)
            feats.append(_first(self.model.encode_image(batch)).float())
        if not feats:
            return torch.zeros(0, self.text_features().shape[1])
        return F.normalize(torch.cat(feats), dim=-1)

    # scores --------------------------------------------------------------
    def probs(self, image_features: torch.Tensor) -> torch.Tensor:
        """``(N, P + N_neg)`` prompt probabilities of image features."""
        scale, bias = logit_params(self.model)
        if self.head == 'softmax':
            bias = None
        return prompt_probs(image_features,
                            self.text_features().to(image_features), scale,
                            bias)

    def records(self, probs: torch.Tensor) -> List[dict]:
        """One record (:data:`RECORD_FIELDS`) per row of ``probs``."""
        n_pos = len(self.positive_prompts)
        pos, neg = probs[:, :n_pos].double(), probs[:, n_pos:].double()
        if self.head == 'softmax':
            pos_sum, neg_sum = pos.sum(1), neg.sum(1)
        else:  # noisy-OR of independent sigmoid probabilities
            pos_sum = 1 - (1 - pos).prod(1)
            neg_sum = 1 - (1 - neg).prod(1)
        s_pos, i_pos = pos.max(1)
        s_neg, i_neg = neg.max(1)
        out = []
        for k in range(probs.shape[0]):
            p_pos, p_neg = float(pos_sum[k]), float(neg_sum[k])
            out.append(
                dict(s_pos=float(s_pos[k]),
                     s_neg=float(s_neg[k]),
                     s_pos_text=self.positive_prompts[int(i_pos[k])],
                     s_neg_text=self.negative_prompts[int(i_neg[k])],
                     p_pos_sum=p_pos,
                     p_neg_sum=p_neg,
                     semantic_multiplier=self.rule(p_pos, p_neg)))
        return out

    def score(
            self,
            image,
            boxes: Sequence[Sequence[float]],
            masks: Optional[Sequence[Optional[np.ndarray]]] = None
    ) -> List[dict]:
        """Score the regions of one image.

        Args:
            image: path, PIL image or uint8 ``(H, W, 3)`` array.
            boxes: ``(R, 4)`` boxes ``[x1, y1, x2, y2]`` in pixels.
            masks: ``R`` bool ``(H, W)`` masks (entries may be None).

        Returns:
            list[dict]: one record per region with :data:`RECORD_FIELDS`.
        """
        boxes = [list(map(float, b)) for b in boxes]
        if not boxes:
            return []
        feats = self.encode_crops(self.prepare_crops(image, boxes, masks))
        return self.records(self.probs(feats))
