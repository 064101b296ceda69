"""2-D sine position encodings and reference-point grids."""
import math

import torch


def sine_position_encoding(height: int, width: int, dims: int,
                           temperature: float = 10000.0,
                           device=None, dtype=torch.float32) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of an ``height x width`` grid.

    Half the channels encode ``y``, half ``x`` (each as interleaved
    sin/cos of geometrically spaced frequencies over ``[0, 2*pi]``).

    Returns:
        Tensor: ``(height * width, dims)``; ``dims`` must be divisible by 4.
    """
    if dims % 4 != 0:
        raise ValueError(f'sine position encoding needs dims divisible by 4, '
                         f'got {dims}')
    half = dims // 2
    ys, xs = reference_grid(height, width, device=device).unbind(-1)[::-1]
    freq = torch.arange(half, dtype=torch.float32, device=device)
    freq = temperature ** (2 * (freq // 2) / half)

    def encode(coord):
        angles = coord[:, None] * (2 * math.pi) / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()],
                           -1).flatten(1)

    return torch.cat([encode(ys), encode(xs)], -1).to(dtype)


def reference_grid(height: int, width: int, device=None) -> torch.Tensor:
    """Normalised ``(x, y)`` centres of an ``height x width`` grid.

    Returns:
        Tensor: ``(height * width, 2)``, row-major, values in ``(0, 1)``.
    """
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([grid_x.flatten(), grid_y.flatten()], -1)
