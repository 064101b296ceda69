"""Batch images for segmentors that preprocess images themselves."""
from typing import Optional

import torch
from mmengine.model import BaseDataPreprocessor

from mmdet.registry import MODELS


@MODELS.register_module()
class ImageListDataPreprocessor(BaseDataPreprocessor):
    """Move images to the device and put channels in RGB order; no resizing,
    padding or normalisation.

    For models that bring images to their own input size and statistics
    (:class:`~plugins.prompt_learning.VPTTPTSegmentor` resizes every image to
    224 and applies CLIP's mean/std), padding here would shift masks
    against images.  Same-sized images are stacked into ``(B, 3, H, W)``;
    otherwise ``inputs`` stays a list of ``(3, H_i, W_i)`` tensors.  Values
    keep their dtype and range (uint8 0..255 from the loading pipeline).

    Args:
        bgr_to_rgb (bool): reverse the channels (mmcv loads BGR).
            Defaults to True.
        non_blocking (bool): asynchronous host-to-device copies.
    """

    def __init__(self, bgr_to_rgb: bool = True,
                 non_blocking: Optional[bool] = False) -> None:
        super().__init__(non_blocking=non_blocking)
        self.bgr_to_rgb = bgr_to_rgb

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if isinstance(inputs, torch.Tensor):
            inputs = list(inputs)
        if self.bgr_to_rgb:
            inputs = [x.flip(0) if x.shape[0] == 3 else x for x in inputs]
        if all(x.shape == inputs[0].shape for x in inputs):
            inputs = torch.stack(inputs)
        return dict(inputs=inputs, data_samples=data.get('data_samples'))
