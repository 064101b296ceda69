"""Inputs for the ms_deform_attn tests (the classic op test's recipe:
values ~U(0, 0.01), attention weights normalised over L * P)."""
import pytest
import torch


def make_inputs(N=2, Lq=3, M=2, D=8, shapes=((6, 4), (3, 2)), P=2,
                dtype=torch.float64, device='cpu', seed=0, loc_range=(0., 1.)):
    """(value, spatial_shapes, level_start_index, locations, weights)."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S, L = int(sizes.sum()), len(shapes)
    value = torch.rand(N, S, M, D, generator=g, dtype=torch.float64) * 0.01
    lo, hi = loc_range
    locations = lo + (hi - lo) * torch.rand(N, Lq, M, L, P, 2, generator=g,
                                            dtype=torch.float64)
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=torch.float64) + 1e-5
    weights /= weights.sum((-1, -2), keepdim=True)
    return (value.to(device, dtype), spatial_shapes.to(device),
            level_start_index.to(device), locations.to(device, dtype),
            weights.to(device, dtype))


@pytest.fixture
def inputs():
    """The input factory: ``inputs(N=..., dtype=...)``."""
    return make_inputs
