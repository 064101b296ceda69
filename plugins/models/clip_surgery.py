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

Host-free: torch, open_clip and :mod:`plugins.utils` only.  The mmdet
backbone (``plugins.mmdet_custom.models.backbones.SurgeryCLIPBackbone``) and the
Open-GroundingDino adapter run the same :func:`surgery_forward`.
"""
import functools
import os
from typing import (Callable, Iterable, List, Optional, Sequence, Tuple, Union)

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch.utils.checkpoint import checkpoint


from .vit_tower import OpenCLIPViTTower

Grid = Tuple[int, int]
#: ``call(fn, x)`` runs ``fn(x)``; hosts pass a wrapper (e.g. gradient
#: checkpointing) that is applied to every block and every surgery branch.
BlockCaller = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor],
                       torch.Tensor]


def _plain_call(fn, x):
    return fn(x)


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


def surgery_forward(
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    surgery_depth: int,
    out_indices: Optional[Iterable[int]] = None,
    call: Optional[BlockCaller] = None,
    keep_original: bool = False
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Run transformer blocks along CLIP Surgery's two paths.

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
        call (callable, optional): ``call(fn, x) -> fn(x)``, applied to
            every block and every surgery branch (e.g. gradient
            checkpointing). Default: a plain call.
        keep_original (bool): also run the original path through the last
            requested block and return its output (the class token of CLIP
            Surgery comes from there).  When False and that block is a
            surgery block, only its value-value branch runs, since its
            original output is not needed. Default: False.

    Returns:
        tuple: ``(outs, x_ori)`` -- ``outs`` a list of ``(B, N, C)`` per
        entry of ``out_indices`` (in that order), ``x_ori`` the original
        path after the last requested block (None unless computed).
    """
    depth = len(blocks)
    start = depth - int(surgery_depth)
    call = call or _plain_call
    indices = [depth - 1] if out_indices is None else list(out_indices)
    last = max(indices)
    wanted = set(indices)
    taken = {}
    x_sur = None
    for i, block in enumerate(blocks):
        if i >= start:
            branch = call(functools.partial(surgery_branch, block), x)
            x_sur = x + branch if x_sur is None else x_sur + branch
        if i < last or keep_original or i < start:
            x = call(block, x)
        else:
            x = None  # the original path's last output is not used
        if i in wanted:
            taken[i] = x if x_sur is None else x_sur
        if i == last:
            break
    return [taken[i] for i in indices], x


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


class SurgeryCLIPVisual(nn.Module):
    """CLIP Surgery image tower: an open_clip ``VisionTransformer`` run
    along the two paths of :func:`surgery_forward`.

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
            blocks that stay global. Default: ViTDet's, the last block of
            each quarter.

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

    def __init__(self,
                 visual: VisionTransformer,
                 surgery_depth: int = 6,
                 pos_embed_interp: Union[str, dict] = 'clip_surgery',
                 window_size: Optional[int] = None,
                 global_blocks: Optional[Sequence[int]] = None):
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise TypeError('SurgeryCLIPVisual needs an open_clip '
                            f'VisionTransformer, got {type(visual).__name__}')
        check_surgery_blocks(visual.transformer.resblocks, surgery_depth,
                             type(self).__name__)
        self.visual = visual
        # the shared tower adapter: padding, position embedding, ln_pre
        self.tower = OpenCLIPViTTower(
            visual, pos_embed_interp=pos_embed_interp,
            owner=type(self).__name__)
        self.surgery_depth = int(surgery_depth)
        self.grad_checkpointing = False
        self.tower.set_window_attention(window_size, global_blocks)

    @property
    def pos_embed_interp(self):
        """The position-embedding resampling spec (the tower's)."""
        return self.tower.pos_embed_interp

    def set_window_attention(self,
                             window_size: Optional[int] = None,
                             global_blocks: Optional[Sequence[int]] = None
                             ) -> None:
        """Windowed attention on (or off with ``window_size=None``); see
        :meth:`plugins.models.vit_tower.ViTTower.set_window_attention`."""
        self.tower.set_window_attention(window_size, global_blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block and surgery branch while training."""
        self.grad_checkpointing = bool(enable)

    def _call(self, fn, x):
        if self.grad_checkpointing and self.training and \
                torch.is_grad_enabled():
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    @property
    def patch_size(self) -> int:
        return self.tower.patch_size

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Pad, patch-embed, add class token and (resampled) position
        embedding, ``ln_pre`` (:class:`~plugins.models.vit_tower.ViTTower`).

        Returns:
            tuple: ``(tokens (B, 1 + gh * gw, C), (gh, gw))``.
        """
        images, grid = self.tower.prepare(images, check_finite=False)
        return self.tower.embed(images), grid

    def forward_tokens(self,
                       images: torch.Tensor,
                       with_proj: bool = True) -> Tuple[torch.Tensor, Grid]:
        """All tokens: class token from the original path, patch tokens
        from the surgery path, after ``ln_post`` (and ``proj``).

        Returns:
            tuple: ``(tokens (B, 1 + gh * gw, D), (gh, gw))``; ``D`` is the
            joint-space width with ``with_proj`` else the tower width.
        """
        x, grid = self.embed(images)
        (x_sur, ), x_ori = surgery_forward(
            self.visual.transformer.resblocks,
            x,
            self.surgery_depth,
            call=self.tower.block_caller(grid, self._call),
            keep_original=True)
        tokens = torch.cat([x_ori[:, :1], x_sur[:, 1:]], dim=1)
        tokens = self.tower.norm(tokens)
        if with_proj:
            tokens = self.tower.project(tokens)
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
        x, grid = self.embed(images)
        (x_sur, ), _ = surgery_forward(
            self.visual.transformer.resblocks,
            x,
            self.surgery_depth,
            call=self.tower.block_caller(grid, self._call))
        return self.tower.tokens_to_map(x_sur, grid, with_proj)


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
