"""Visual prompt tuning (VPT, Jia et al. 2022) for a frozen ViT image tower."""
import math
from typing import Optional

import torch
from torch import nn

from plugins.models.vit_tower import BlockCaller, BlockHook, ViTTower


class VisualPromptHook(BlockHook):
    """VPT's prompts as a hook of the tower's block loop.

    Before block ``i`` (every block with ``deep``, the first otherwise) the
    tokens beyond the tower's own are replaced by ``prompts[i]`` (by
    ``prompts[0]``); each block's reported output drops the prompt tokens.

    Args:
        prompts (Tensor): ``(L, n, C)`` with ``deep``, else ``(1, n, C)``.
        deep (bool): VPT-Deep (fresh prompts per block) or VPT-Shallow.
    """

    def __init__(self, prompts: torch.Tensor, deep: bool = True) -> None:
        self.prompts = prompts
        self.deep = bool(deep)
        self.num_tokens: Optional[int] = None

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.num_tokens is None:
            self.num_tokens = x.shape[1]
        if self.deep or index == 0:
            prompts = self.prompts[index if self.deep else 0].to(x.dtype)
            # Deep: drop the previous block's prompt outputs, add ours.
            x = torch.cat([x[:, :self.num_tokens],
                           prompts.expand(x.shape[0], -1, -1)], dim=1)
        return x

    def after_block(self, index: int, x_in: torch.Tensor,
                    x_out: torch.Tensor, call: BlockCaller) -> torch.Tensor:
        return x_out[:, :self.num_tokens]


class VisualPromptLearner(nn.Module):
    """Learned tokens appended to the token sequence of every ViT block.

    VPT-Deep (``deep=True``, the default): block ``i`` sees the tower's tokens
    followed by its own ``num_prompts`` prompts; whatever the previous block
    made of its prompts is discarded, so every block's prompts are fresh
    parameters.  VPT-Shallow (``deep=False``): one prompt set enters before
    the first block and travels through all of them.  After the last block the
    prompt tokens are dropped and the tower's final norm runs on the rest, so
    the output lines up token for token with the tower's own features; with
    ``num_prompts=0`` it equals them.

    The learner holds only the prompts; the tower
    (:func:`plugins.models.vit_tower.build_vit_tower`) runs them through its
    one block loop as a :class:`VisualPromptHook`, with its windowed
    attention and gradient checkpointing.
    With BiomedCLIP's ViT-B/16 (12 blocks, width 768) and 4 prompts it has
    12 x 4 x 768 = 36,864 parameters.

    Args:
        num_layers (int): number of transformer blocks of the tower.
        num_prompts (int): prompt tokens per block. Defaults to 4.
        width (int): token width of the tower. Defaults to 768.
        deep (bool): one prompt set per block (VPT-Deep) rather than one at
            the input (VPT-Shallow). Defaults to True.
        patch_size (int): patch size of the tower; sets the uniform init range
            ``sqrt(6 / (3 * patch_size**2 + width))`` (Xavier over the patch
            embedding's fan-in and fan-out, as VPT does). Defaults to 16.
        dropout (float): dropout on the prompts in training. Defaults to 0.

    Shapes:
        forward: pixels ``(B, 3, H, W)`` -> tokens ``(B, P + N, width)``
        (``P`` prefix tokens, ``N`` patches; prompts removed, final norm
        applied).
    """

    def __init__(self,
                 num_layers: int,
                 num_prompts: int = 4,
                 width: int = 768,
                 deep: bool = True,
                 patch_size: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_prompts < 0:
            raise ValueError(f'num_prompts ({num_prompts}) must be >= 0')
        self.num_layers = num_layers
        self.num_prompts = num_prompts
        self.width = width
        self.deep = deep
        self.prompts = nn.Parameter(
            torch.empty(num_layers if deep else 1, num_prompts, width))
        self.dropout = nn.Dropout(dropout)
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + width))
        nn.init.uniform_(self.prompts, -bound, bound)

    def extra_repr(self) -> str:
        return (f'num_layers={self.num_layers}, num_prompts='
                f'{self.num_prompts}, width={self.width}, deep={self.deep}')

    def forward(self, pixels: torch.Tensor, tower: ViTTower) -> torch.Tensor:
        """Prompted tokens ``(B, P + N, width)`` after the final norm.

        Args:
            pixels (Tensor): ``(B, 3, H, W)`` normalised images.
            tower (ViTTower): the (frozen) image tower.
        """
        blocks = tower.blocks
        if tower.width != self.width:
            raise ValueError(f'visual prompts have width {self.width}, the '
                             f'image tower {tower.width}')
        if self.deep and len(blocks) != self.num_layers:
            raise ValueError(f'visual prompts for {self.num_layers} blocks, '
                             f'the image tower has {len(blocks)}')
        pixels, grid = tower.prepare(pixels)
        tower.check_attention_budget(pixels.shape[0], grid, pixels.dtype,
                                     extra_tokens=self.num_prompts)
        hooks = []
        if self.num_prompts:
            hooks.append(VisualPromptHook(self.dropout(self.prompts),
                                          self.deep))
        (tokens, ) = tower.forward_blocks(
            tower.embed(pixels), [len(blocks) - 1], grid, hooks)
        return tower.norm(tokens)
