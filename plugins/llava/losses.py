"""Mask losses of the segmentation head (computed in float32)."""
import torch
import torch.nn.functional as F


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel sigmoid binary cross-entropy.

    Args:
        logits (Tensor): ``(S, H, W)`` mask logits.
        targets (Tensor): ``(S, H, W)`` binary masks.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def mask_dice_loss(logits: torch.Tensor, targets: torch.Tensor,
                   smooth: float = 1.0) -> torch.Tensor:
    """Mean ``1 - Dice`` over masks, on sigmoid probabilities.

    ``smooth`` keeps an empty prediction of an empty mask at loss 0 and the
    gradient finite.

    Args:
        logits (Tensor): ``(S, H, W)`` mask logits.
        targets (Tensor): ``(S, H, W)`` binary masks.
        smooth (float): Added to numerator and denominator. Default: 1.0.
    """
    probs = logits.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    numerator = 2 * (probs * targets).sum(1) + smooth
    denominator = probs.sum(1) + targets.sum(1) + smooth
    return (1 - numerator / denominator).mean()
