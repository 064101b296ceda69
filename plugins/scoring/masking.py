"""Region preprocessing: crop a box and apply its mask (pure numpy).

All functions take and return ``uint8`` arrays ``(H, W, 3)`` (RGB).  The
arithmetic is done in float64 and the result is rounded half up
(``floor(x + 0.5)``) and clipped to ``[0, 255]`` before the cast back to
uint8, so values are reproducible by hand: e.g. ``100 * 1.05 -> 105``,
``250 * 1.05 = 262.5 -> 255``, soft with alpha 0.4:
``0.6 * 10 + 0.4 * 128 = 57.2 -> 57``.
"""
from typing import Optional, Sequence

import numpy as np

#: The gray value the outside of a mask is set (or blended) to.
GRAY = 128
#: The factor the inside of a mask is brightened by.
INSIDE_GAIN = 1.05
STRATEGIES = ('gray', 'raw', 'soft')


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _check(crop: np.ndarray, mask: Optional[np.ndarray]) -> None:
    if crop.dtype != np.uint8 or crop.ndim != 3:
        raise ValueError(f'crop must be uint8 (H, W, C), got {crop.dtype} '
                         f'{crop.shape}')
    if mask is not None and mask.shape != crop.shape[:2]:
        raise ValueError(f'mask shape {mask.shape} must equal the crop '
                         f'size {crop.shape[:2]}')


def mask_gray(crop: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """Outside the mask -> gray 128; inside x1.05 (clipped).

    Args:
        crop (np.ndarray): uint8 ``(H, W, 3)``.
        mask (np.ndarray, optional): bool ``(H, W)``; None: all inside.
    """
    _check(crop, mask)
    inside = crop.astype(np.float64) * INSIDE_GAIN
    if mask is None:
        return _to_uint8(inside)
    return _to_uint8(np.where(mask[..., None], inside, float(GRAY)))


def mask_raw(crop: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """The crop unchanged (the mask is ignored); a copy."""
    _check(crop, mask)
    return crop.copy()


def mask_soft(crop: np.ndarray,
              mask: Optional[np.ndarray],
              alpha: float = 0.4) -> np.ndarray:
    """Outside blended toward gray: ``(1 - alpha) * pix + alpha * 128``;
    inside x1.05 (clipped).

    Args:
        crop (np.ndarray): uint8 ``(H, W, 3)``.
        mask (np.ndarray, optional): bool ``(H, W)``; None: all inside.
        alpha (float): weight of gray outside the mask. Default: 0.4.
    """
    _check(crop, mask)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'soft_alpha ({alpha}) must be in [0, 1]')
    pix = crop.astype(np.float64)
    inside = pix * INSIDE_GAIN
    if mask is None:
        return _to_uint8(inside)
    outside = (1.0 - alpha) * pix + alpha * GRAY
    return _to_uint8(np.where(mask[..., None], inside, outside))


def apply_strategy(crop: np.ndarray,
                   mask: Optional[np.ndarray],
                   strategy: str = 'gray',
                   soft_alpha: float = 0.4) -> np.ndarray:
    """Dispatch to :func:`mask_gray`, :func:`mask_raw` or :func:`mask_soft`."""
    if strategy == 'gray':
        return mask_gray(crop, mask)
    if strategy == 'raw':
        return mask_raw(crop, mask)
    if strategy == 'soft':
        return mask_soft(crop, mask, soft_alpha)
    raise ValueError(f"unknown strategy '{strategy}' (known: {STRATEGIES})")


def crop_box(image: np.ndarray,
             box: Sequence[float],
             mask: Optional[np.ndarray] = None):
    """Cut the box ``[x1, y1, x2, y2]`` (pixels) out of an image and mask.

    Coordinates are floored/ceiled to whole pixels and clipped to the image;
    a box with no area keeps at least one pixel.

    Args:
        image (np.ndarray): uint8 ``(H, W, 3)``.
        box (sequence): ``[x1, y1, x2, y2]``.
        mask (np.ndarray, optional): bool ``(H, W)`` in image coordinates.

    Returns:
        tuple: ``(crop (h, w, 3), crop_mask (h, w) or None)``.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    x1 = int(min(max(np.floor(x1), 0), w - 1))
    y1 = int(min(max(np.floor(y1), 0), h - 1))
    x2 = int(min(max(np.ceil(x2), x1 + 1), w))
    y2 = int(min(max(np.ceil(y2), y1 + 1), h))
    crop = image[y1:y2, x1:x2]
    if mask is None:
        return crop, None
    if mask.shape != (h, w):
        raise ValueError(f'mask shape {mask.shape} must equal the image '
                         f'size {(h, w)}')
    return crop, mask[y1:y2, x1:x2].astype(bool)
