"""CLIP Surgery's dual path over an open_clip ``VisionTransformer``.

CLIP Surgery (Li et al. 2023, "CLIP Surgery for Better Explainability with
Enhancement in Open-Vocabulary Tasks") leaves CLIP's weights alone and adds a
second token path through the last ``surgery_depth`` blocks:

* the **original path** is the unchanged CLIP computation;
* in each surgery block, the block's own attention weights also compute a
  **value-value attention** on the original path's normalised input
  ``ln_1(x_ori)``: ``v = W_v ln_1(x_ori) + b_v``, per head
  ``softmax(v @ v^T * head_dim ** -0.5) @ v``, then the block's output
  projection (no FFN);
* the **surgery path** starts as the input of the first surgery block and
  adds each surgery block's value-value output.

The surgery path's patch tokens are the dense features (after ``ln_post``,
and ``proj`` for the joint image-text space); the class token comes from the
original path.  :func:`feature_surgery` and :func:`similarity_map` turn them
into per-class explainability maps.

The dual path is a hook of the one block loop
(:class:`SurgeryPath` in :func:`plugins.models.vit_tower.run_blocks`), so
windowed attention and gradient checkpointing apply to both paths.
:class:`SurgeryCLIPVisual` is the one implementation: an
:class:`~plugins.models.vit_tower.OpenCLIPViTTower` running that hook, held
by the mmdet backbone
(``plugins.mmdet_custom.models.backbones.SurgeryCLIPBackbone``) and by the
Open-GroundingDino adapter alike.

Host-free: torch, open_clip and :mod:`plugins.utils` only.
"""
import functools
import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .vit_tower import (BlockCaller, BlockHook, Grid, OpenCLIPViTTower,
                        run_blocks)


def check_surgery_blocks(blocks: Sequence[nn.Module],
                         surgery_depth: int,
                         owner: str = 'CLIP Surgery') -> int:
    """Validate ``surgery_depth`` and the block type; return the first
    surgery block's index.

    Raises:
        ValueError: ``surgery_depth`` outside ``[0, len(blocks)]``.
        TypeError: a surgery block is not open_clip's
            ``ResidualAttentionBlock`` with batch-first
            ``nn.MultiheadAttention`` (the only layout whose value
            projection is known).
    """
    depth = len(blocks)
    if not 0 <= int(surgery_depth) <= depth:
        raise ValueError(f'{owner}: surgery_depth ({surgery_depth}) must be '
                         f'between 0 and the number of blocks ({depth})')
    start = depth - int(surgery_depth)
    for i in range(start, depth):
        block = blocks[i]
        attn = getattr(block, 'attn', None)
        if not (isinstance(block, ResidualAttentionBlock) and isinstance(
                attn, nn.MultiheadAttention) and attn.batch_first):
            raise TypeError(
                f'{owner}: block {i} is a {type(block).__name__} (attention '
                f'{type(attn).__name__}); value-value attention needs '
                "open_clip's ResidualAttentionBlock with batch-first "
                'nn.MultiheadAttention (standard OpenAI/OpenCLIP ViTs)')
    return start


def value_value_attention(attn: nn.MultiheadAttention,
                          x: torch.Tensor) -> torch.Tensor:
    """Value-value self-attention with an attention layer's own weights.

    Per head ``softmax(v @ v^T * head_dim ** -0.5) @ v`` with
    ``v = x W_v^T + b_v`` (the value third of the layer's input
    projection), then the layer's output projection.

    Args:
        attn (nn.MultiheadAttention): batch-first attention layer.
        x (Tensor): ``(B, N, C)`` normalised tokens.

    Returns:
        Tensor: ``(B, N, C)``.
    """
    c, heads = attn.embed_dim, attn.num_heads
    if attn.in_proj_weight is not None:
        w_v = attn.in_proj_weight[2 * c:]
    else:  # separate q/k/v weights (kdim/vdim differ from embed_dim)
        w_v = attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * c:] if attn.in_proj_bias is not None \
        else None
    v = F.linear(x, w_v, b_v)
    b, n, _ = v.shape
    v = v.view(b, n, heads, c // heads).transpose(1, 2)  # (B, h, N, d)
    # scaled_dot_product_attention's default scale is head_dim ** -0.5
    out = F.scaled_dot_product_attention(v, v, v)
    out = out.transpose(1, 2).reshape(b, n, c)
    return attn.out_proj(out)


def surgery_branch(block: ResidualAttentionBlock,
                   x_ori: torch.Tensor) -> torch.Tensor:
    """One surgery block's addition to the surgery path.

    ``ls_1(value_value_attention(ln_1(x_ori)))``: the block's value-value
    attention on the original path's normalised input, no FFN (``ls_1``,
    the attention branch's LayerScale, is an identity in CLIP ViTs).

    Args:
        block: open_clip ``ResidualAttentionBlock``.
        x_ori (Tensor): ``(B, N, C)``, the original path's input to the block.
    """
    return block.ls_1(value_value_attention(block.attn, block.ln_1(x_ori)))


class SurgeryPath(BlockHook):
    """CLIP Surgery's second path as a hook of the block loop.

    From block ``start`` on, each block's :func:`surgery_branch` of its
    input (the original path's) is added to the surgery path, which starts
    as the input of block ``start``; the reported tokens are the surgery
    path's from there on.  The loop carries the original path.

    Args:
        blocks (Sequence[nn.Module]): the loop's blocks.
        start (int): first surgery block.
        keep_original (bool): run the original path through the last block
            too (its class token is CLIP Surgery's); otherwise a final
            surgery block runs only its branch, since its original output
            is not needed.
    """

    def __init__(self, blocks: Sequence[nn.Module], start: int,
                 keep_original: bool = False) -> None:
        self.blocks = blocks
        self.start = int(start)
        self.keep_original = bool(keep_original)
        self.x_sur: Optional[torch.Tensor] = None

    def skip_block(self, index: int, final: bool) -> bool:
        return final and not self.keep_original and index >= self.start

    def branch(self, index: int, x_in: torch.Tensor,
               call: BlockCaller) -> None:
        # before the block (see BlockHook.branch): the order in which the
        # backward pass sums the gradients meeting in x_in and the block's
        # weights is then the one the recorded demo numbers were made with
        if index < self.start:
            return
        branch = call(index,
                      functools.partial(surgery_branch, self.blocks[index]),
                      x_in)
        self.x_sur = x_in + branch if self.x_sur is None else \
            self.x_sur + branch

    def after_block(self, index: int, x_in: torch.Tensor,
                    x_out: Optional[torch.Tensor],
                    call: BlockCaller) -> torch.Tensor:
        return x_out if index < self.start else self.x_sur


def surgery_forward(
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    surgery_depth: int,
    out_indices: Optional[Iterable[int]] = None,
    call: Optional[BlockCaller] = None,
    keep_original: bool = False
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Run transformer blocks along CLIP Surgery's two paths
    (:func:`plugins.models.vit_tower.run_blocks` with :class:`SurgeryPath`).

    The first ``len(blocks) - surgery_depth`` blocks run as usual; from
    there the original path continues unchanged and the surgery path
    accumulates each block's :func:`surgery_branch`.

    Args:
        blocks: the blocks, in order (e.g. ``visual.transformer.resblocks``).
        x (Tensor): ``(B, N, C)`` input of the first block.
        surgery_depth (int): blocks (counted from the end) with the
            value-value path; 0 gives the plain CLIP computation.
        out_indices (Iterable[int], optional): non-negative block indices
            whose output to return; the tokens are the original path's
            before the surgery blocks and the surgery path's from the first
            surgery block on.  Default: the last block.
        call (callable, optional): ``call(index, fn, x) -> fn(x)``, applied
            to every block and every surgery branch (a tower's
            :meth:`~plugins.models.vit_tower.ViTTower.block_caller`).
            Default: a plain call.
        keep_original (bool): see :class:`SurgeryPath`. Default: False.

    Returns:
        tuple: ``(outs, x_ori)`` -- ``outs`` a list of ``(B, N, C)`` per
        entry of ``out_indices`` (in that order), ``x_ori`` the original
        path after the last requested block (None unless computed).
    """
    depth = len(blocks)
    indices = [depth - 1] if out_indices is None else list(out_indices)
    hook = SurgeryPath(blocks, depth - int(surgery_depth), keep_original)
    x_ori, outs = run_blocks(blocks, x, indices, call, [hook])
    return outs, x_ori


def feature_surgery(image_tokens: torch.Tensor,
                    text_features: torch.Tensor,
                    temperature: float = 2.0,
                    redundant_features: Optional[torch.Tensor] = None,
                    num_prefix_tokens: int = 1) -> torch.Tensor:
    """CLIP Surgery's feature surgery: class-wise patch-text similarities
    with the redundant (class-shared) part removed.

    Per image: class weights ``w = softmax(temperature * cls @ text.T)``
    divided by their mean over classes; element-wise products
    ``patch * text_c * w_c`` for every patch and class; their mean over
    classes (the redundant features) is subtracted; the sum over channels
    is the similarity.  With ``redundant_features`` given (e.g. the text
    feature of an empty prompt), the similarity is instead
    ``patch @ (text - redundant).T``.

    Features are expected L2-normalised (as CLIP compares them).

    Args:
        image_tokens (Tensor): ``(B, P + N, D)`` projected image tokens,
            class token first (e.g. :meth:`SurgeryCLIPVisual.forward`).
        text_features (Tensor): ``(T, D)``, one row per class prompt.
        temperature (float): multiplies the class-token similarities
            before the softmax. Default: 2.
        redundant_features (Tensor, optional): ``(D,)`` or ``(1, D)``.
        num_prefix_tokens (int): leading non-patch tokens; the first is
            the class token. Default: 1.

    Returns:
        Tensor: ``(B, N, T)`` similarity of each patch token to each class.
    """
    if image_tokens.dim() != 3 or text_features.dim() != 2 or \
            image_tokens.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            'feature_surgery expects image tokens (B, P + N, D) and text '
            f'features (T, D), got {tuple(image_tokens.shape)} and '
            f'{tuple(text_features.shape)}')
    patches = image_tokens[:, num_prefix_tokens:]
    if redundant_features is not None:
        return patches @ (text_features -
                          redundant_features.reshape(1, -1)).t()
    if num_prefix_tokens < 1:
        raise ValueError('feature_surgery needs the class token '
                         '(num_prefix_tokens >= 1) for its class weights')
    cls = image_tokens[:, :1]  # (B, 1, D)
    prob = (temperature * (cls @ text_features.t())).softmax(dim=-1)
    weights = prob / prob.mean(dim=-1, keepdim=True)  # (B, 1, T)
    # (B, N, T, D): element-wise products, weighted per class
    feats = patches.unsqueeze(2) * text_features.unsqueeze(0).unsqueeze(0)
    feats = feats * weights.unsqueeze(-1)
    feats = feats - feats.mean(dim=2, keepdim=True)
    return feats.sum(dim=-1)


def similarity_map(similarity: torch.Tensor,
                   image_size: Union[int, Grid],
                   grid: Optional[Grid] = None,
                   mode: str = 'bilinear',
                   eps: float = 1e-12) -> torch.Tensor:
    """Upsample patch similarities to per-class maps over the image.

    Each class's similarities are min-max normalised to ``[0, 1]`` over the
    patches, laid out on the patch grid and interpolated to the image size
    (for explainability pictures: overlay ``maps[b, c]`` on image ``b``).

    Args:
        similarity (Tensor): ``(B, N, T)``, e.g. from
            :func:`feature_surgery`.
        image_size (int | tuple[int, int]): output ``(H, W)``.
        grid (tuple[int, int], optional): ``(gh, gw)`` with ``gh * gw = N``.
            Default: square.
        mode (str): ``F.interpolate`` mode. Default: ``'bilinear'``.
        eps (float): guards a constant map. Default: 1e-12.

    Returns:
        Tensor: ``(B, T, H, W)`` in ``[0, 1]``.
    """
    b, n, t = similarity.shape
    if grid is None:
        side = int(round(n**0.5))
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise ValueError(f'similarity_map: {n} patch tokens do not fill a '
                         f'{grid[0]}x{grid[1]} grid')
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    lo = similarity.amin(dim=1, keepdim=True)
    hi = similarity.amax(dim=1, keepdim=True)
    sm = (similarity - lo) / (hi - lo).clamp_min(eps)
    sm = sm.transpose(1, 2).reshape(b, t, grid[0], grid[1])
    kwargs = {} if mode == 'nearest' else dict(align_corners=False)
    return F.interpolate(sm, size=tuple(image_size), mode=mode, **kwargs)


class SurgeryCLIPVisual(OpenCLIPViTTower):
    """CLIP Surgery image tower: an open_clip ``VisionTransformer`` run
    along the two paths of :class:`SurgeryPath` (the tower's own block
    hook, so :meth:`forward_intermediates` gives the surgery path's maps).

    Any input size ``>= patch``: the image is zero-padded at the
    bottom/right to the patch multiple and the position embedding is
    resampled to the grid, by default as CLIP Surgery does (bilinear,
    ``align_corners=False``, no anti-aliasing).  OpenAI weights must run
    with QuickGELU: build the model with it (``'ViT-B-16-quickgelu'``); the
    loaders (:func:`build_clip_surgery`,
    :func:`plugins.models.load_open_clip_weights`) refuse an OpenAI file
    for a GELU model.

    Args:
        visual (open_clip.transformer.VisionTransformer): the image tower
            (batch-first, no attentional pooler), its weights unchanged.
        surgery_depth (int): blocks, counted from the end, with the
            value-value path. Default: 6 (of 12 in ViT-B).
        pos_embed_interp (str | dict): position-embedding resampling, see
            :func:`plugins.utils.pos_embed_interp_args`. Default:
            ``'clip_surgery'``.
        window_size (int, optional): windowed attention for large inputs
            (ViTDet: 14): blocks not in ``global_blocks`` attend within
            non-overlapping windows of the patch grid, their value-value
            branch on the same windows; same weights.  None (default):
            every block global.  See :meth:`set_window_attention`.
        global_blocks (Sequence[int], optional): with ``window_size``, the
            blocks that stay global. Default: one in three, at most four
            (ViTDet's 2, 5, 8, 11 for 12 blocks).
        **kwargs: ``owner``, ``check_finite`` (default False here),
            ``attention_budget`` of
            :class:`~plugins.models.vit_tower.ViTTower`.

    Example:
        >>> import torch
        >>> from plugins.models import create_model
        >>> from plugins.models.clip_surgery import (SurgeryCLIPVisual,
        ...                                          feature_surgery)
        >>> clip = create_model('ViT-Tiny-16-test').eval()
        >>> tower = SurgeryCLIPVisual(clip.visual, surgery_depth=2)
        >>> tokens = tower(torch.rand(1, 3, 224, 224), normalize=True)
        >>> tokens.shape  # class token + 14 x 14 patches, joint space
        torch.Size([1, 197, 32])
        >>> text = torch.nn.functional.normalize(torch.rand(3, 32), dim=-1)
        >>> feature_surgery(tokens, text).shape
        torch.Size([1, 196, 3])
    """

    default_pos_embed_interp = 'clip_surgery'

    def __init__(self,
                 visual: VisionTransformer,
                 surgery_depth: int = 6,
                 pos_embed_interp: Union[str, dict] = 'clip_surgery',
                 window_size: Optional[int] = None,
                 global_blocks: Optional[Sequence[int]] = None,
                 **kwargs):
        owner = kwargs.setdefault('owner', type(self).__name__)
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f'{owner} needs an open_clip '
                            f'VisionTransformer, got {type(visual).__name__}')
        check_surgery_blocks(visual.transformer.resblocks, surgery_depth,
                             owner)
        kwargs.setdefault('check_finite', False)
        super().__init__(visual, pos_embed_interp=pos_embed_interp,
                         window_size=window_size, global_blocks=global_blocks,
                         **kwargs)
        self.surgery_depth = int(surgery_depth)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def surgery_start(self) -> int:
        """Index of the first surgery block."""
        return self.num_blocks - self.surgery_depth

    def block_hooks(self, keep_original: bool = False) -> List[SurgeryPath]:
        return [SurgeryPath(self.blocks, self.surgery_start, keep_original)]

    def surgery_unused_modules(self, last: Optional[int] = None
                               ) -> List[nn.Module]:
        """The FFN (``ln_2``, ``mlp``, ``ls_2``) of block ``last`` when it
        is a surgery block and the output ends there: its original path
        only feeds the class token, which a map drops, so a map forward
        never runs it (keep it frozen: DDP-safe).

        Args:
            last (int, optional): the last block whose output is used.
                Default: the last block.
        """
        last = self.num_blocks - 1 if last is None else int(last)
        if self.surgery_depth == 0 or last < self.surgery_start:
            return []
        block = self.blocks[last]
        return [block.ln_2, block.mlp, block.ls_2]

    def forward_tokens(self,
                       images: torch.Tensor,
                       with_proj: bool = True) -> Tuple[torch.Tensor, Grid]:
        """All tokens: class token from the original path, patch tokens
        from the surgery path, after ``ln_post`` (and ``proj``).

        Returns:
            tuple: ``(tokens (B, 1 + gh * gw, D), (gh, gw))``; ``D`` is the
            joint-space width with ``with_proj`` else the tower width.
        """
        images, grid = self.prepare(images)
        self.check_attention_budget(images.shape[0], grid, images.dtype)
        x_ori, (x_sur, ) = run_blocks(
            self.blocks, self.embed(images), [self.num_blocks - 1],
            self.block_caller(grid), self.block_hooks(keep_original=True))
        tokens = torch.cat([x_ori[:, :1], x_sur[:, 1:]], dim=1)
        tokens = self.norm(tokens)
        if with_proj:
            tokens = self.project(tokens)
        return tokens, grid

    def forward(self,
                images: torch.Tensor,
                normalize: bool = False,
                with_proj: bool = True) -> torch.Tensor:
        """``encode_image_with_all_tokens``: ``(B, 1 + N, D)`` tokens.

        Args:
            images (Tensor): ``(B, 3, H, W)``, CLIP-normalised.
            normalize (bool): L2-normalise every token. Default: False.
            with_proj (bool): project into the joint image-text space.
                Default: True.
        """
        tokens, _ = self.forward_tokens(images, with_proj=with_proj)
        return F.normalize(tokens, dim=-1) if normalize else tokens

    def forward_map(self,
                    images: torch.Tensor,
                    with_proj: bool = False) -> torch.Tensor:
        """Dense features: the surgery path's patch tokens as a map.

        Returns:
            Tensor: ``(B, D, ceil(H/p), ceil(W/p))``.
        """
        return self.forward_intermediates(
            images, 1, norm=True, stop_early=True, intermediates_only=True,
            with_proj=with_proj)[0]


def build_clip_surgery(model_name: str = 'ViT-B-16',
                       pretrained: Optional[Union[str, os.PathLike]] = None,
                       surgery_depth: int = 6,
                       pos_embed_interp: Union[str, dict] = 'clip_surgery',
                       **kwargs):
    """Build an open_clip CLIP offline and wrap its image tower.

    Args:
        model_name (str): open_clip ViT, e.g. ``'ViT-B-16-quickgelu'``
            for OpenAI's ``ViT-B-16.pt`` (the checkpoint CLIP Surgery uses,
            trained with QuickGELU; a GELU name is refused for it).
        pretrained (str, optional): local open_clip/OpenAI weights (see
            :func:`plugins.models.build_open_clip`).
        surgery_depth (int): see :class:`SurgeryCLIPVisual`. Default: 6.
        pos_embed_interp (str | dict): see :class:`SurgeryCLIPVisual`.
            Default: ``'clip_surgery'``.
        **kwargs: passed to :func:`plugins.models.build_open_clip`.

    Returns:
        tuple: ``(surgery_visual, clip_model, preprocess, tokenizer)``;
        ``clip_model.encode_text`` gives the text features for
        :func:`feature_surgery`.
    """
    from .open_clip_factory import build_open_clip
    model, preprocess, tokenizer = build_open_clip(model_name, pretrained,
                                                   **kwargs)
    tower = SurgeryCLIPVisual(model.visual, surgery_depth, pos_embed_interp)
    return tower.eval(), model, preprocess, tokenizer
