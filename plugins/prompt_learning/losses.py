"""Losses for training prompts on similarity maps (pure torch)."""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def upsample_to_masks(
        logits: torch.Tensor, masks: Sequence[torch.Tensor],
        mode: str = 'bilinear',
        align_corners: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upsample per-image logits to their masks' sizes and flatten the pixels.

    Masks may differ in size; every image's logits are resized to its own
    mask, then all pixels are concatenated.

    Args:
        logits (Tensor): ``(B, K, h, w)`` class scores on the patch grid.
        masks (Sequence[Tensor]): ``B`` masks ``(H_i, W_i)`` of class indices.

    Returns:
        tuple: pixel logits ``(P, K)`` and labels ``(P,)``, with
        ``P = sum H_i W_i``.
    """
    if len(masks) != logits.shape[0]:
        raise ValueError(f'{logits.shape[0]} logit maps but {len(masks)} '
                         'masks')
    kwargs = dict(mode=mode)
    if mode in ('bilinear', 'bicubic'):
        kwargs['align_corners'] = align_corners
    sizes = {tuple(m.shape[-2:]) for m in masks}
    if len(sizes) == 1:
        up = F.interpolate(logits, size=sizes.pop(), **kwargs)
        pixel_logits = up.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        labels = torch.stack(list(masks)).reshape(-1)
        return pixel_logits, labels.long()
    pixel_logits, labels = [], []
    for logit, mask in zip(logits, masks):
        up = F.interpolate(logit[None], size=tuple(mask.shape[-2:]), **kwargs)
        pixel_logits.append(up[0].flatten(1).t())
        labels.append(mask.reshape(-1))
    return torch.cat(pixel_logits), torch.cat(labels).long()


def dice_loss(pixel_logits: torch.Tensor, labels: torch.Tensor,
              ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean_k dice_k``.

    Softmax probabilities against one-hot labels over all valid pixels;
    ``eps`` smooths classes absent from both.

    Args:
        pixel_logits (Tensor): ``(P, K)``.
        labels (Tensor): ``(P,)`` with ``ignore_index`` for skipped pixels.
    """
    valid = labels != ignore_index
    probs = pixel_logits[valid].softmax(dim=-1)
    one_hot = F.one_hot(labels[valid], pixel_logits.shape[-1]).to(probs)
    inter = (probs * one_hot).sum(0)
    total = probs.sum(0) + one_hot.sum(0)
    return 1.0 - ((2 * inter + eps) / (total + eps)).mean()


def flip_consistency_loss(features: torch.Tensor,
                          flipped_features: torch.Tensor,
                          grid_size: Tuple[int, int]) -> torch.Tensor:
    """Patch features of an image and of its mirror image should agree.

    ``flipped_features`` come from the horizontally flipped image; they are
    flipped back on the patch grid and compared by cosine similarity.

    Args:
        features (Tensor): ``(B, N, D)`` with ``N = h * w``.
        flipped_features (Tensor): ``(B, N, D)`` of the flipped images.
        grid_size (tuple[int, int]): ``(h, w)``.

    Returns:
        Tensor: ``1 - mean cosine similarity``, in [0, 2].
    """
    b, n, d = features.shape
    h, w = grid_size
    if h * w != n:
        raise ValueError(f'grid {h}x{w} does not hold {n} patches')
    back = flipped_features.reshape(b, h, w, d).flip(2).reshape(b, n, d)
    return 1.0 - F.cosine_similarity(features, back, dim=-1).mean()
