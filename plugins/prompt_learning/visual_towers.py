"""Uniform access to the image towers of open_clip models.

Visual prompt tuning needs to run a ViT block by block and splice tokens in
between.  open_clip has two ViT families with different module names; the
adapters here expose the same five steps for both and always call the
tower's own modules, so weights and numerics are exactly the tower's:

* ``embed(pixels)``: patch embedding, prefix (class) tokens, position
  embedding and pre-norm -> ``(B, P + N, C)``
* ``blocks``: the transformer blocks, each ``(B, T, C) -> (B, T, C)``
* ``norm(tokens)``: the final LayerNorm
* ``project(patch_tokens)``: into the joint image-text space, ``(B, N, D)``
* ``pool(tokens)``: the image embedding, as ``encode_image`` returns it

Adapters hold references to the tower; they own no parameters.
"""
from typing import Sequence

import torch
from torch import nn


class TimmViTTower:
    """open_clip ``TimmModel`` with a timm ``VisionTransformer`` trunk
    (BiomedCLIP: ``vit_base_patch16_224``, ``timm_pool=''``,
    ``timm_proj='linear'``).

    Args:
        visual (nn.Module): ``model.visual`` (an open_clip ``TimmModel``).
    """

    def __init__(self, visual: nn.Module) -> None:
        trunk = visual.trunk
        if not hasattr(trunk, 'blocks') or not hasattr(trunk, 'patch_embed'):
            raise TypeError(f'timm trunk {type(trunk).__name__} is not a '
                            'VisionTransformer (needs patch_embed and blocks)')
        if 'pool' in dict(visual.head.named_children()):
            raise NotImplementedError(
                'timm towers with an attention-pool head have no per-patch '
                'projection; use timm_pool="" or "avg"')
        self.visual = visual
        self.trunk = trunk
        self.width = trunk.embed_dim
        self.num_prefix_tokens = trunk.num_prefix_tokens
        self.grid_size = tuple(trunk.patch_embed.grid_size)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.trunk.blocks

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        x = trunk.patch_embed(pixels)
        x = trunk._pos_embed(x)  # prefix tokens, pos embed and pos_drop
        x = trunk.patch_drop(x)
        return trunk.norm_pre(x)

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.trunk.norm(tokens)

    def project(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        # head = Sequential(drop, proj) acts on the last dim of any shape.
        return self.visual.head(patch_tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.head(self.trunk.forward_head(tokens))


class OpenCLIPViTTower:
    """open_clip's own ``VisionTransformer`` (``ViT-B-16``, ``ViT-B-32`` ...).

    Args:
        visual (nn.Module): ``model.visual`` (an open_clip
            ``VisionTransformer``).
    """

    def __init__(self, visual: nn.Module) -> None:
        if getattr(visual, 'attn_pool', None) is not None:
            raise NotImplementedError('open_clip towers with an attentional '
                                      'pooler are not supported')
        if getattr(visual, 'final_ln_after_pool', False):
            raise NotImplementedError('open_clip towers with '
                                      'final_ln_after_pool are not supported')
        self.visual = visual
        self.width = visual.conv1.out_channels
        self.num_prefix_tokens = 1  # the class token
        self.grid_size = tuple(visual.grid_size)
        self.batch_first = getattr(visual.transformer, 'batch_first', True)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        if self.batch_first:
            return self.visual.transformer.resblocks
        return [_SeqFirst(b) for b in self.visual.transformer.resblocks]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(pixels)

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(tokens)

    def project(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        proj = self.visual.proj
        return patch_tokens if proj is None else patch_tokens @ proj

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._global_pool(tokens)
        return self.project(pooled)


class _SeqFirst(nn.Module):
    """Run a sequence-first (L, B, C) block on batch-first tokens."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.transpose(0, 1)).transpose(0, 1)


def build_visual_tower(clip_model: nn.Module):
    """Pick the adapter for ``clip_model.visual``.

    Returns:
        TimmViTTower | OpenCLIPViTTower
    """
    visual = getattr(clip_model, 'visual', clip_model)
    if hasattr(visual, 'trunk'):
        return TimmViTTower(visual)
    if hasattr(visual, 'conv1') and hasattr(visual, 'transformer'):
        return OpenCLIPViTTower(visual)
    raise TypeError(f'image tower {type(visual).__name__}: expected an '
                    'open_clip TimmModel (timm ViT trunk) or '
                    'VisionTransformer')

