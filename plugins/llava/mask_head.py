"""Mask head: ``[SEG]`` embeddings dotted with per-pixel features."""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class PixelDecoder(nn.Module):
    """A small FPN turning the vision tower's maps into per-pixel features.

    Each level gets a 1x1 lateral conv + GroupNorm to ``mask_dim``; coarser
    levels are upsampled (bilinear) and added top-down; a 3x3 conv +
    GroupNorm + ReLU and a 1x1 conv give the mask features at the finest
    level's stride (4 for Swin).

    Args:
        in_channels (Sequence[int]): Channels of the input maps, finest first.
        mask_dim (int): Channels of the output features. Default: 256.
        num_groups (int): GroupNorm groups (must divide ``mask_dim``).
            Default: 32.

    Shapes:
        - input: list of ``(B, C_i, H_i, W_i)``, finest first
        - output: ``(B, mask_dim, H_0, W_0)``
    """

    def __init__(self, in_channels: Sequence[int], mask_dim: int = 256,
                 num_groups: int = 32):
        super().__init__()
        num_groups = min(num_groups, mask_dim)
        if mask_dim % num_groups:
            raise ValueError(f'num_groups ({num_groups}) must divide '
                             f'mask_dim ({mask_dim})')
        self.in_channels = list(in_channels)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, mask_dim, 1, bias=False),
                          nn.GroupNorm(num_groups, mask_dim))
            for c in self.in_channels)
        self.output = nn.Sequential(
            nn.Conv2d(mask_dim, mask_dim, 3, padding=1, bias=False),
            nn.GroupNorm(num_groups, mask_dim), nn.ReLU(inplace=True),
            nn.Conv2d(mask_dim, mask_dim, 1))

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.lateral):
            raise ValueError(f'PixelDecoder expects {len(self.lateral)} maps '
                             f'with channels {self.in_channels}, got '
                             f'{len(features)}')
        dtype = self.output[-1].weight.dtype
        x = None
        for lateral, feat in zip(reversed(self.lateral), reversed(features)):
            y = lateral(feat.to(dtype))
            if x is not None:
                y = y + F.interpolate(x, size=y.shape[-2:], mode='bilinear',
                                      align_corners=False)
            x = y
        return self.output(x)


class SegTokenMaskHead(nn.Module):
    """Mask logits from ``[SEG]`` hidden states and pixel features.

    The LLM's last hidden state at each ``[SEG]`` token is projected by a
    2-layer MLP to ``mask_dim`` and dotted with the pixel features of its
    image; the logits are upsampled (bilinear) to the output size. Because
    the dot product is linear per pixel, upsampling the logits equals
    dotting with upsampled pixel features, at ``1/mask_dim`` of the memory.

    Args:
        hidden_size (int): LLM hidden size.
        mask_dim (int): Channels of the pixel features. Default: 256.

    Shapes:
        - seg_hidden: ``(S, hidden_size)``, one row per ``[SEG]`` token
        - pixel_features: ``(B, mask_dim, h, w)``
        - seg_batch_index: ``(S,)`` image of each ``[SEG]`` token
        - output: ``(S, H_out, W_out)`` mask logits
    """

    def __init__(self, hidden_size: int, mask_dim: int = 256):
        super().__init__()
        self.seg_proj = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(inplace=True),
            nn.Linear(hidden_size, mask_dim))

    def forward(self, seg_hidden: torch.Tensor, pixel_features: torch.Tensor,
                seg_batch_index: torch.Tensor,
                output_size: Sequence[int]) -> torch.Tensor:
        dtype = self.seg_proj[0].weight.dtype
        seg_embed = self.seg_proj(seg_hidden.to(dtype))  # (S, mask_dim)
        pixels = pixel_features[seg_batch_index].to(dtype)  # (S, D, h, w)
        logits = torch.einsum('sd,sdhw->shw', seg_embed, pixels)
        if tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits[:, None], size=tuple(output_size),
                                   mode='bilinear', align_corners=False)[:, 0]
        return logits
