"""A detector wrapper that re-scores predictions with a zero-shot CLIP."""
from typing import Optional, Union

import numpy as np
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample, OptSampleList, SampleList
from mmdet.utils import ConfigType, OptMultiConfig
from torch import Tensor

from plugins.scoring import RegionScorer, build_region_scorer, load_image

MODES = ('multiply', 'filter')


@MODELS.register_module()
class RegionRescoringDetector(BaseDetector):
    """Run a detector, then score each predicted region with a CLIP model.

    Every prediction (box, and mask when the detector predicts masks) is
    cropped from the original image (``img_path`` of the data sample) and
    scored against positive and negative prompts by a
    :class:`plugins.scoring.RegionScorer`; its ``semantic_multiplier`` then
    either multiplies the score (``mode='multiply'``; scores may exceed 1,
    which changes nothing for ranking-based metrics such as COCO mAP) or
    decides whether the prediction is kept (``mode='filter'``: kept when the
    multiplier is ``>= min_multiplier``).  The predictions gain
    ``semantic_multipliers`` and ``raw_scores`` fields.

    Training is the inner detector's (``loss`` is delegated); the scorer is
    not part of the state dict, and checkpoints of the bare detector load
    as they are (their keys are moved under ``detector.``).

    Args:
        detector (dict): config of any mmdet detector.
        scorer (dict | RegionScorer): keyword arguments of
            :func:`plugins.scoring.build_region_scorer` (``model``,
            ``weights``, ``positive_prompts``, ``negative_prompts``,
            ``strategy``, ``multiplier``, ...), built on first use, or a
            ready scorer.
        mode (str): ``'multiply'`` or ``'filter'``. Default: ``'multiply'``.
        min_multiplier (float): ``'filter'`` keeps predictions whose
            multiplier is at least this. Default: 1.0.
        score_thr (float): predictions scoring below this are not scored
            (multiplier 1.0; kept by ``'filter'``), to save time on the
            long tail. Default: 0.0.
        init_cfg (dict, optional): Default: None.

    Example:
        >>> model = dict(
        ...     type='RegionRescoringDetector',
        ...     detector=dict(type='DINO', ...),
        ...     scorer=dict(model='ViT-B-32',
        ...                 weights='open_clip_model.safetensors',
        ...                 strategy='soft'),
        ...     mode='multiply')
    """

    def __init__(self,
                 detector: ConfigType,
                 scorer: Union[ConfigType, RegionScorer],
                 mode: str = 'multiply',
                 min_multiplier: float = 1.0,
                 score_thr: float = 0.0,
                 init_cfg: OptMultiConfig = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}' (known: {MODES})")
        super().__init__(data_preprocessor=None, init_cfg=init_cfg)
        self.detector = MODELS.build(detector)
        # the inner detector's preprocessor prepares the batch
        self.data_preprocessor = self.detector.data_preprocessor
        self.mode = mode
        self.min_multiplier = float(min_multiplier)
        self.score_thr = float(score_thr)
        # kept out of the module tree: not in the state dict, built lazily
        self._scorer_cfg = scorer
        self._scorer = scorer if isinstance(scorer, RegionScorer) else None
        self._register_load_state_dict_pre_hook(self._prefix_detector_keys)

    @staticmethod
    def _prefix_detector_keys(state_dict, prefix, *args) -> None:
        """Checkpoints of the bare detector: move keys under detector."""
        own = (prefix + 'detector.', prefix + 'data_preprocessor.')
        for key in list(state_dict):
            if key.startswith(prefix) and not key.startswith(own):
                new = prefix + 'detector.' + key[len(prefix):]
                state_dict[new] = state_dict.pop(key)

    @property
    def scorer(self) -> RegionScorer:
        if self._scorer is None:
            self._scorer = build_region_scorer(**dict(self._scorer_cfg))
        return self._scorer

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList):
        return self.detector.loss(batch_inputs, batch_data_samples)

    def _forward(self,
                 batch_inputs: Tensor,
                 batch_data_samples: OptSampleList = None):
        return self.detector._forward(batch_inputs, batch_data_samples)

    def extract_feat(self, batch_inputs: Tensor):
        return self.detector.extract_feat(batch_inputs)

    def predict(self,
                batch_inputs: Tensor,
                batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Inner detector's predictions, re-scored (see the class doc)."""
        results = self.detector.predict(batch_inputs,
                                        batch_data_samples,
                                        rescale=rescale)
        scorer = self.scorer
        scorer.model.to(batch_inputs.device)
        for sample in results:
            self.rescore(sample, scorer, rescale)
        return results

    def rescore(self,
                sample: DetDataSample,
                scorer: RegionScorer,
                rescale: bool = True) -> DetDataSample:
        """Re-score ``sample.pred_instances`` in place (and return it)."""
        inst = sample.pred_instances
        scores = inst.scores
        multipliers = scores.new_ones(scores.shape)
        todo = (scores >= self.score_thr).nonzero().flatten()
        if len(todo):
            path: Optional[str] = sample.metainfo.get('img_path')
            if path is None:
                raise KeyError('RegionRescoringDetector needs the original '
                               "image: the data sample has no 'img_path'")
            boxes = inst.bboxes[todo].detach().float().cpu()
            if not rescale and 'scale_factor' in sample.metainfo:
                boxes = boxes / boxes.new_tensor(
                    sample.metainfo['scale_factor']).repeat(2)
            masks = None
            if rescale and 'masks' in inst:
                masks = [
                    m for m in inst.masks[todo].detach().cpu().numpy().astype(
                        bool)
                ]
            records = scorer.score(load_image(path), boxes.tolist(), masks)
            multipliers[todo] = scores.new_tensor(
                np.array([r['semantic_multiplier'] for r in records]))
        inst.raw_scores = scores
        inst.semantic_multipliers = multipliers
        if self.mode == 'multiply':
            inst.scores = scores * multipliers
        else:
            sample.pred_instances = inst[multipliers >= self.min_multiplier]
        return sample
