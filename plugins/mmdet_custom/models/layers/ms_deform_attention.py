"""mmcv's ``MultiScaleDeformableAttention`` running on ``plugins.ops``."""
import inspect
import warnings
from typing import Optional

import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.registry import MODELS

from plugins.layers import check_attention_args, ms_deform_attention_forward


@MODELS.register_module()
class MSDeformAttention(MultiScaleDeformableAttention):
    """Multi-scale deformable attention (Deformable DETR) on our kernels.

    A drop-in for mmcv's ``MultiScaleDeformableAttention``: the same
    arguments, parameters (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``), state-dict keys, initialisation and
    residual semantics (``dropout(output_proj(attn)) + identity``), but the
    sampling runs through :func:`plugins.ops.ms_deform_attn`, i.e. our CPU
    kernel on CPU (mmcv uses its slow ``grid_sample`` path there), our CUDA
    kernel on GPU, half/bfloat16 included.  Being a subclass, it passes
    mmdet's ``isinstance(m, MultiScaleDeformableAttention)`` checks.

    mmdet's DINO / Deformable-DETR layers construct mmcv's class directly;
    :func:`convert_ms_deform_attention` (or the one-line config switch
    ``custom_hooks = [dict(type='MSDeformAttentionHook')]``) turns those
    into this class in place, keeping their parameters.

    Args:
        embed_dims (int): Embedding dimension. Default: 256.
        num_heads (int): Attention heads ``M``. Default: 8.
        num_levels (int): Feature levels ``L``. Default: 4.
        num_points (int): Sampling points per head and level ``P``.
            Default: 4.
        im2col_step (int): Accepted for compatibility; unused (our kernels
            take any batch size in one launch). Default: 64.
        dropout (float): Dropout on the output before the residual.
            Default: 0.1.
        batch_first (bool): Inputs are ``(N, L, C)`` instead of ``(L, N, C)``.
            Default: False.
        norm_cfg (dict, optional): Unused, as in mmcv. Default: None.
        init_cfg (dict, optional): Initialisation config. Default: None.
        value_proj_ratio (float): Width of ``value_proj`` relative to
            ``embed_dims``. Default: 1.0.

    Example:
        >>> import torch
        >>> attn = MSDeformAttention(embed_dims=32, num_heads=4, num_levels=2,
        ...                          num_points=2, batch_first=True)
        >>> shapes = torch.tensor([[8, 8], [4, 4]])
        >>> starts = torch.tensor([0, 64])
        >>> value = torch.rand(2, 80, 32)
        >>> query = torch.rand(2, 10, 32)
        >>> ref = torch.rand(2, 10, 2, 2)
        >>> attn(query, value=value, reference_points=ref,
        ...      spatial_shapes=shapes, level_start_index=starts).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, *args, **kwargs) -> None:
        # The shared size check first (mmcv accepts num_points=0 and builds
        # an attention that returns zeros; num_heads=0 is a modulo by zero).
        bound = inspect.signature(MultiScaleDeformableAttention.__init__).bind(
            self, *args, **kwargs)
        bound.apply_defaults()
        sizes = bound.arguments
        check_attention_args(type(self).__name__, sizes['embed_dims'],
                             sizes['num_heads'], sizes['num_levels'],
                             sizes['num_points'])
        with warnings.catch_warnings():
            # mmcv advises power-of-2 head widths for *its* CUDA kernel.
            warnings.filterwarnings('ignore', message="You'd better set")
            super().__init__(*args, **kwargs)

    def forward(self,
                query: torch.Tensor,
                key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                reference_points: Optional[torch.Tensor] = None,
                spatial_shapes: Optional[torch.Tensor] = None,
                level_start_index: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        """Attend from ``query`` to the multi-scale ``value``.

        Args:
            query (Tensor): ``(Lq, N, C)`` (``(N, Lq, C)`` if batch_first).
            key (Tensor, optional): Unused (deformable attention has no keys).
            value (Tensor, optional): ``(S, N, C)`` flattened levels
                (``(N, S, C)`` if batch_first); defaults to ``query``.
            identity (Tensor, optional): Residual, shaped like ``query``;
                defaults to ``query`` (before ``query_pos`` is added).
            query_pos (Tensor, optional): Added to ``query``.
            key_padding_mask (Tensor, optional): ``(N, S)`` bool, True where
                ``value`` is padding (zeroed).
            reference_points (Tensor): ``(N, Lq, L, 2)`` normalised points or
                ``(N, Lq, L, 4)`` boxes.
            spatial_shapes (Tensor): ``(L, 2)`` int64 ``(H, W)``.
            level_start_index (Tensor): ``(L,)``.

        Returns:
            Tensor: shaped like ``query``.
        """
        if identity is None and 'residual' in kwargs:  # mmcv's old name
            identity = kwargs.pop('residual')
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        output = ms_deform_attention_forward(self, query, value,
                                             reference_points, spatial_shapes,
                                             level_start_index,
                                             key_padding_mask)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return self.dropout(output) + identity
