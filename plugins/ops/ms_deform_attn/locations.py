"""Sampling locations from reference points and predicted offsets."""
import torch


def sampling_locations(reference_points: torch.Tensor,
                       sampling_offsets: torch.Tensor,
                       spatial_shapes: torch.Tensor) -> torch.Tensor:
    """Turn per-level reference points and offsets into the op's locations.

    Deformable-DETR's two conventions:

    * points ``(N, Lq, L, 2)`` normalised ``(x, y)``: offsets are in pixels of
      each level, ``loc = ref + offset / (W_l, H_l)``;
    * boxes ``(N, Lq, L, 4)`` normalised ``(cx, cy, w, h)``: offsets are in
      units of the box, ``loc = ref_xy + offset / P * ref_wh / 2``.

    Args:
        reference_points (Tensor): ``(N, Lq, L, 2)`` or ``(N, Lq, L, 4)``.
        sampling_offsets (Tensor): ``(N, Lq, M, L, P, 2)``.
        spatial_shapes (Tensor): ``(L, 2)`` int64 rows ``(H_l, W_l)``.

    Returns:
        Tensor: ``(N, Lq, M, L, P, 2)`` sampling locations.
    """
    ref = reference_points[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
        size_wh = spatial_shapes.flip(-1)[None, None, None, :, None, :]
        return ref + sampling_offsets / size_wh
    if reference_points.shape[-1] == 4:
        num_points = sampling_offsets.shape[4]
        return (ref[..., :2]
                + sampling_offsets / num_points * ref[..., 2:] * 0.5)
    raise ValueError(f'reference_points must end in 2 (points) or 4 (boxes), '
                     f'got shape {tuple(reference_points.shape)}')
