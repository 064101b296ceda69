"""Swin vision tower returning the four NCHW maps PSALM's projector sees."""
from typing import List, Sequence

import torch
import torch.nn as nn
from timm.models.swin_transformer import SwinTransformer


class SwinVisionTower(nn.Module):
    """A timm Swin Transformer that returns one NCHW map per stage.

    PSALM's tower (Mask2Former's Swin) returns ``res2..res5`` with a
    LayerNorm on every output; this class does the same on top of timm's
    :class:`~timm.models.swin_transformer.SwinTransformer` and its
    ``forward_intermediates`` (timm keeps NHWC inside the stages and
    permutes each intermediate to NCHW). Swin-B gives channels
    ``[128, 256, 512, 1024]`` at strides ``[4, 8, 16, 32]``: for a 1024x1024
    image, maps of 256, 128, 64 and 32 pixels.

    The tower is frozen by default (``requires_grad=False``, eval mode, no
    autograd graph), like PSALM's, and may be cast to the compute dtype
    (fp16/bf16): the projector then receives half-precision maps.

    Args:
        img_size (int): Input resolution (square). Default: 1024.
        patch_size (int): Patch size of the stem. Default: 4.
        embed_dim (int): Channels of the first stage; stage ``i`` has
            ``embed_dim * 2**i``. Default: 128 (Swin-B).
        depths (Sequence[int]): Blocks per stage. Default: ``(2, 2, 18, 2)``.
        num_heads (Sequence[int]): Heads per stage. Default: ``(4, 8, 16, 32)``.
        window_size (int): Attention window. Default: 12.
        mlp_ratio (float): MLP expansion. Default: 4.0.
        drop_path_rate (float): Stochastic depth. Default: 0.0.
        frozen (bool): Freeze the weights and run without autograd.
            Default: True.

    Shapes:
        - input: ``(B, 3, img_size, img_size)``
        - output: list of 4 tensors ``(B, C_i, H/s_i, W/s_i)``

    Example:
        >>> tower = SwinVisionTower(img_size=64, embed_dim=16, depths=(1, 1, 1, 1),
        ...                         num_heads=(1, 2, 4, 8), window_size=4)
        >>> [tuple(f.shape) for f in tower(torch.rand(2, 3, 64, 64))]
        [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    """

    def __init__(self,
                 img_size: int = 1024,
                 patch_size: int = 4,
                 embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: int = 12,
                 mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0,
                 frozen: bool = True):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths ({len(depths)} stages) and num_heads '
                             f'({len(num_heads)} stages) must have the same '
                             'length')
        self.img_size = img_size
        self.swin = SwinTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
            depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate, num_classes=0)
        # The classifier's final norm and head are never used.
        self.swin.norm = nn.Identity()
        self.channels: List[int] = [
            info['num_chs'] for info in self.swin.feature_info]
        self.strides: List[int] = [
            info['reduction'] for info in self.swin.feature_info]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.out_norms[0].weight.dtype

    def train(self, mode: bool = True):
        # A frozen tower stays in eval mode (no dropout / drop-path) whatever
        # the trainer asks of the whole model.
        return super().train(mode and not self.frozen)

    def _forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        maps = self.swin.forward_intermediates(
            images.to(self.dtype), intermediates_only=True)
        # LayerNorm over channels of each NCHW map (Mask2Former's ``norm{i}``).
        return [norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                for norm, x in zip(self.out_norms, maps)]

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        if self.frozen:
            with torch.no_grad():
                return self._forward(images)
        return self._forward(images)


def build_vision_tower(cfg: dict, img_size: int,
                       frozen: bool = True) -> SwinVisionTower:
    """Build a :class:`SwinVisionTower` from a shipped JSON config dict.

    Keys starting with ``_`` (comments) are ignored.
    """
    kwargs = {k: v for k, v in cfg.items() if not k.startswith('_')}
    return SwinVisionTower(img_size=img_size, frozen=frozen, **kwargs)
