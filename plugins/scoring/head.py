"""Image-text scoring heads, chosen from the model.

Both follow open_clip's ``get_logits``: the model stores the *log* of its
temperature in ``logit_scale`` (CLIP and SigLIP alike), so the logits are
``logit_scale.exp() * img @ txt.T`` (``+ logit_bias`` when the model has
one).  A model whose ``logit_scale`` is already the linear factor sets
``logit_scale_is_log = False``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

HEADS = ('softmax', 'sigmoid')


def _param(model: nn.Module, name: str) -> Optional[torch.Tensor]:
    value = getattr(model, name, None)
    if value is None:
        return None
    return torch.as_tensor(value).detach().float()


def logit_params(
        model: nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(scale, bias)``: the linear logit scale and the bias (or None)."""
    scale = _param(model, 'logit_scale')
    if scale is None:
        raise AttributeError(f'{type(model).__name__} has no logit_scale; '
                             'cannot score images against texts')
    if getattr(model, 'logit_scale_is_log', True):
        scale = scale.exp()
    return scale, _param(model, 'logit_bias')


def head_type(model: nn.Module) -> str:
    """``'sigmoid'`` for models with a ``logit_bias`` (SigLIP, ConceptCLIP),
    else ``'softmax'`` (CLIP)."""
    return 'sigmoid' if _param(model, 'logit_bias') is not None \
        else 'softmax'


def prompt_probs(image_features: torch.Tensor, text_features: torch.Tensor,
                 scale: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-prompt probabilities.

    Args:
        image_features (Tensor): ``(B, D)``, L2-normalised.
        text_features (Tensor): ``(T, D)``, L2-normalised.
        scale (Tensor): linear logit scale (scalar).
        bias (Tensor, optional): logit bias; given: sigmoid head (each
            prompt independent), None: softmax over all ``T`` prompts.

    Returns:
        Tensor: ``(B, T)``.
    """
    logits = scale.to(image_features) * image_features @ text_features.T
    if bias is None:
        return logits.softmax(dim=-1)
    return (logits + bias.to(logits)).sigmoid()
