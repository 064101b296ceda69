"""Visual prompt tuning (VPT, Jia et al. 2022) for a frozen ViT image tower."""
import math

import torch
from torch import nn


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

    The learner holds only the prompts; the tower runs through
    :func:`plugins.models.vit_tower.build_vit_tower`.
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

    def forward(self, pixels: torch.Tensor, tower) -> torch.Tensor:
        blocks = tower.blocks
        if tower.width != self.width:
            raise ValueError(f'visual prompts have width {self.width}, the '
                             f'image tower {tower.width}')
        if self.deep and len(blocks) != self.num_layers:
            raise ValueError(f'visual prompts for {self.num_layers} blocks, '
                             f'the image tower has {len(blocks)}')
        x = tower.embed(pixels)
        num_tokens = x.shape[1]
        if self.num_prompts == 0:
            for block in blocks:
                x = block(x)
            return tower.norm(x)
        prompts = self.dropout(self.prompts).to(x.dtype)
        batch = x.shape[0]
        for i, block in enumerate(blocks):
            if self.deep or i == 0:
                layer_prompts = prompts[i if self.deep else 0]
                # Deep: drop the previous block's prompt outputs, add ours.
                x = torch.cat(
                    [x[:, :num_tokens],
                     layer_prompts.expand(batch, -1, -1)], dim=1)
            x = block(x)
        return tower.norm(x[:, :num_tokens])
