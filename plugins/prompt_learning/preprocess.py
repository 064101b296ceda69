"""Tensor images in, CLIP-normalised pixels out.

Users feed tensors straight from their own loaders, in whatever range those
produce; :func:`preprocess_tensor_images` turns them into what a CLIP image
tower expects.  The mean/std are never written down here: they come from the
model (open_clip stores its ``preprocess_cfg`` on ``model.visual``), see
:func:`clip_preprocess_cfg`.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

from plugins.models.normalization import preprocess_cfg, resize_and_normalize

#: Names accepted for ``value_range``.
VALUE_RANGES = ('0-1', '-1-1', '0-255')


#: Image size, mean, std and interpolation of an open_clip model: the one
#: reader of model statistics, :func:`plugins.models.normalization.\
#: preprocess_cfg`, under this package's name.
clip_preprocess_cfg = preprocess_cfg


def detect_value_range(image: torch.Tensor) -> str:
    """Guess one image's value range: ``'0-255'``, ``'-1-1'`` or ``'0-1'``.

    Integer tensors and any value above 1 mean 0..255; otherwise a negative
    value means -1..1; otherwise 0..1.  An image that lies in [0, 1] but was
    meant as -1..1 (no negative pixel at all) cannot be told apart; pass
    ``value_range`` explicitly for such data.
    """
    if not torch.is_floating_point(image):
        return '0-255'
    if image.numel() and image.max() > 1.0:
        return '0-255'
    if image.numel() and image.min() < 0.0:
        return '-1-1'
    return '0-1'


def _to_unit_range(image: torch.Tensor, value_range: str) -> torch.Tensor:
    image = image.float()
    if value_range == '0-255':
        return image / 255.0
    if value_range == '-1-1':
        return (image + 1.0) / 2.0
    if value_range == '0-1':
        return image
    raise ValueError(f'value_range {value_range!r}: expected one of '
                     f'{VALUE_RANGES}')


def _as_chw(image: torch.Tensor) -> torch.Tensor:
    if image.dim() == 2:  # (H, W) grey image
        image = image[None]
    if image.dim() != 3:
        raise ValueError(f'image of shape {tuple(image.shape)}: expected '
                         '(C, H, W) or (H, W) per image')
    channels = image.shape[0]
    if channels == 1:
        return image.expand(3, -1, -1)
    if channels != 3:
        raise ValueError(f'image with {channels} channels: expected 1 or 3')
    return image


def preprocess_tensor_images(
        images: Union[torch.Tensor, Sequence[torch.Tensor]],
        size: Union[int, Tuple[int, int]] = 224,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        interpolation: str = 'bicubic',
        value_range: Optional[str] = None,
        device: Optional[torch.device] = None) -> torch.Tensor:
    """Bring image tensors of any range, size and channel count to CLIP input.

    Per image: detect the value range (or use ``value_range``) and map it to
    [0, 1], expand 1 channel to 3, resize to ``size`` (antialiased), then
    normalise with ``mean``/``std``.  Callers pass the model's statistics,
    usually ``**clip_preprocess_cfg(model)``.

    Args:
        images (Tensor | list[Tensor]): ``(B, C, H, W)`` or ``(B, H, W)``, or a
            list of ``(C, H, W)`` / ``(H, W)`` images of different sizes.
            ``C`` is 1 or 3; values in [0, 1], [-1, 1] or [0, 255].
        size (int | tuple[int, int]): output ``(h, w)``. Defaults to 224.
        mean (Sequence[float]): per-channel mean, in [0, 1] units.
        std (Sequence[float]): per-channel std, in [0, 1] units.
        interpolation (str): ``'bicubic'`` or ``'bilinear'``.
        value_range (str, optional): force ``'0-1'``, ``'-1-1'`` or
            ``'0-255'`` instead of detecting it per image.
        device (torch.device, optional): where the output lives; defaults to
            the input's device.

    Returns:
        Tensor: ``(B, 3, h, w)`` float32.
    """
    if isinstance(size, int):
        size = (size, size)
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images[:, None]  # (B, H, W) -> (B, 1, H, W)
    if len(images) == 0:
        raise ValueError('preprocess_tensor_images got no images')
    units = []
    for image in images:
        if device is not None:
            image = image.to(device)
        image = _as_chw(image)
        units.append(
            _to_unit_range(image, value_range or detect_value_range(image)))
    if all(u.shape == units[0].shape for u in units):
        return resize_and_normalize(torch.stack(units), size, mean, std,
                                    interpolation)
    # a list of differently sized images
    return torch.cat([
        resize_and_normalize(u[None], size, mean, std, interpolation)
        for u in units
    ])
