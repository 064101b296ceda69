"""Multi-scale deformable attention by index gathers (the export form).

The same function as the kernels and :func:`ms_deform_attn_reference`, but
written only with elementwise arithmetic, integer indexing (one ``Gather``
per bilinear corner) and batched matrix products: no ``grid_sample``, no
Python loop over levels, no shape read from a tensor's values.  That makes it

* exportable to plain ONNX operators (``Gather``, ``MatMul``, ``Floor``, ...)
  that ONNX Runtime runs without a custom-op library and TensorRT compiles
  without its ``GridSample`` layer (which miscompiles bilinear sampling,
  NVIDIA/TensorRT#4813);
* traceable with symbolic feature-map sizes: ``spatial_shapes`` and
  ``level_start_index`` enter as tensors, so one graph serves every input
  size.

:func:`plugins.ops.ms_deform_attn.export.export_decompositions` maps the
registered op ``torch.ops.plugins.ms_deform_attn`` to this function, for
``ExportedProgram.run_decompositions``.
"""
import torch


def ms_deform_attn_gather(value: torch.Tensor,
                          spatial_shapes: torch.Tensor,
                          level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor,
                          attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with gathers (export form).

    Level ``l`` is sampled at pixel ``loc * (W_l, H_l) - 0.5``; each of the
    four bilinear corners that falls outside the map contributes zero, as
    ``grid_sample(padding_mode='zeros', align_corners=False)`` and the
    kernels do.

    Args:
        value (Tensor): ``(N, S, M, D)``, levels flattened row-major and
            concatenated, ``S = sum_l H_l * W_l``.
        spatial_shapes (Tensor): ``(L, 2)`` integer rows ``(H_l, W_l)``.
        level_start_index (Tensor): ``(L,)`` offset of each level in ``S``.
        sampling_locations (Tensor): ``(N, Lq, M, L, P, 2)`` normalised
            ``(x, y)``; values outside ``[0, 1]`` are allowed.
        attention_weights (Tensor): ``(N, Lq, M, L, P)``.

    Returns:
        Tensor: ``(N, Lq, M * D)`` in ``value``'s dtype (sampling runs in
        the locations' dtype, as in the reference).
    """
    dtype = sampling_locations.dtype
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    # (N, S, M, D) -> rows (n, m, s) of one (N*M*S, D) table, so that a
    # single flat index picks batch, head, level and pixel at once.
    table = value.to(dtype).permute(0, 2, 1, 3).reshape(N * M * S, D)
    # Everything below is laid out (N, M, Lq, L, P): heads before queries,
    # so the gathered rows of one (n, m) are contiguous for the matmul.
    loc = sampling_locations.permute(0, 2, 1, 3, 4, 5)
    weights = attention_weights.permute(0, 2, 1, 3, 4).to(dtype)
    shapes = spatial_shapes.long()
    height = shapes[:, 0].view(L, 1)          # broadcasts against (L, P)
    width = shapes[:, 1].view(L, 1)
    start = level_start_index.long().view(L, 1)
    x = loc[..., 0] * width.to(dtype) - 0.5   # (N, M, Lq, L, P) pixels
    y = loc[..., 1] * height.to(dtype) - 0.5
    x0f = x.floor()
    y0f = y.floor()
    fx = x - x0f                              # weight of the right corner
    fy = y - y0f                              # weight of the lower corner
    x0 = x0f.long()
    y0 = y0f.long()
    rows = (torch.arange(N, device=value.device).view(N, 1) * M
            + torch.arange(M, device=value.device).view(1, M)) * S
    base = rows.view(N, M, 1, 1, 1) + start    # (N, M, 1, L, 1)
    out = None
    for dy in (0, 1):
        yc = y0 + dy
        wy = fy if dy else 1 - fy
        y_in = (yc >= 0) & (yc < height)
        yc = torch.minimum(torch.maximum(yc, torch.zeros_like(yc)),
                           height - 1)
        for dx in (0, 1):
            xc = x0 + dx
            wx = fx if dx else 1 - fx
            inside = y_in & (xc >= 0) & (xc < width)
            xc = torch.minimum(torch.maximum(xc, torch.zeros_like(xc)),
                               width - 1)
            # Out-of-map corners read a clamped (valid) row and weigh 0.
            corner_w = weights * wx * wy * inside.to(dtype)
            index = (base + yc * width + xc).reshape(-1)
            picked = table.index_select(0, index).view(N * M, Lq, L * P, D)
            # (N*M, Lq, 1, L*P) @ (N*M, Lq, L*P, D) -> (N*M, Lq, 1, D)
            term = torch.matmul(corner_w.reshape(N * M, Lq, 1, L * P), picked)
            out = term if out is None else out + term
    out = out.view(N, M, Lq, D).permute(0, 2, 1, 3).reshape(N, Lq, M * D)
    return out.to(value.dtype)

