"""Small helpers shared by the test files (``from tests.helpers import ...``;
pytest.ini puts the repository root on ``sys.path``)."""
from typing import Callable, Dict

import torch
import torch.nn as nn


def randn_images(*size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Deterministic ``(batch, 3, *size)`` normal images."""
    return torch.randn(
        batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def gradients(model: nn.Module,
              loss: Callable[[nn.Module], torch.Tensor]) -> Dict[str,
                                                                torch.Tensor]:
    """``{name: grad}`` of every parameter that got one from
    ``loss(model).backward()``."""
    loss(model).backward()
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters() if p.grad is not None
    }


def assert_checkpointing_keeps_gradients(
        build: Callable[[bool], nn.Module],
        loss: Callable[[nn.Module], torch.Tensor]) -> None:
    """Gradient checkpointing changes no gradient, and really runs.

    Args:
        build: ``build(checkpointing) -> model`` (same weights each time).
        loss: ``loss(model) -> scalar``.
    """
    from unittest import mock

    import torch.utils.checkpoint as cp
    grads, calls = [], []
    real = cp.checkpoint
    for enabled in (False, True):
        model = build(enabled)

        def counted(*args, **kwargs):
            calls.append(enabled)
            return real(*args, **kwargs)

        with mock.patch('plugins.models.vit_tower.checkpoint', counted):
            grads.append(gradients(model, loss))
    assert calls and all(calls), 'checkpointing never (or wrongly) ran'
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key])
