"""COCO-style regions as the scorer takes them: boxes and masks.

A region is ``{"box": [x1, y1, x2, y2]}`` or ``{"bbox": [x, y, w, h]}``
(COCO), optionally with ``"segmentation"`` (COCO RLE, compressed or not, or
polygons).  Host-free: numpy, and pycocotools for masks.
"""
from typing import List, Optional, Union

import numpy as np


def to_xyxy(region: dict) -> List[float]:
    """The region's box as ``[x1, y1, x2, y2]`` floats.

    Raises:
        ValueError: the region has neither ``box`` nor ``bbox``.
    """
    if 'box' in region:
        return [float(v) for v in region['box']]
    if 'bbox' in region:
        x, y, w, h = (float(v) for v in region['bbox'])
        return [x, y, x + w, y + h]
    raise ValueError(f"region has neither 'box' nor 'bbox': {region}")


def decode_mask(segmentation: Optional[Union[dict, list]], height: int,
                width: int) -> Optional[np.ndarray]:
    """A bool ``(H, W)`` mask from COCO RLE or polygons (None: no mask)."""
    if not segmentation:
        return None
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, list):
        rle = mask_utils.merge(
            mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get('counts'), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode()
    return mask_utils.decode(rle).astype(bool)
