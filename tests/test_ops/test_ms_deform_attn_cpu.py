"""The compiled CPU kernel against the float64 grid_sample reference."""
import pytest
import torch

from plugins.ops import ms_deform_attn, ms_deform_attn_reference

pytestmark = pytest.mark.usefixtures('kernel_loaded')


def _op():
    # Looked up lazily: the library is loaded by the kernel_loaded fixture.
    return torch.ops.plugins.ms_deform_attn


def _reference64(value, shapes, starts, loc, attn):
    return ms_deform_attn_reference(value.double(), shapes, starts,
                                    loc.double(), attn.double())


# How the kernel reads a head's values, by the reads per row that a task
# makes (P = 2 points per level, queries per task 1..Lq whatever the thread
# count): (queries, levels) that put every level in the same case.
LAYOUTS = {
    # in place: every level has more than Lq * P * 4 / 2 rows
    'in-place': (3, ((5, 4), (5, 3))),
    # the big level in place, the small one copied first (rows <= 4)
    'small-levels-copied': (3, ((8, 8), (2, 2))),
    # many reads of each row: the whole head copied into a slab
    'slab': (48, ((4, 3), (2, 2))),
}


def _grads(fn, value, shapes, starts, loc, attn, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out.to(out.dtype))


def test_forward_float64_matches_reference(inputs):
    args = inputs(dtype=torch.float64)
    err = (ms_deform_attn(*args) - _reference64(*args)).abs().max().item()
    assert err <= 1e-12


def test_forward_float32_matches_reference(inputs):
    args = inputs(dtype=torch.float32)
    err = (ms_deform_attn(*args).double() - _reference64(*args)).abs().max().item()
    assert err <= 1e-5


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_within_one_percent(inputs, dtype):
    args = inputs(N=2, Lq=5, M=2, D=32, dtype=dtype)
    out = ms_deform_attn(*args)
    assert out.dtype == dtype
    ref = _reference64(*args)
    scale = ref.abs().max()
    assert (out.double() - ref).abs().max() <= 1e-2 * scale
    # Gradients also accumulate in float32 and come back in the input dtype.
    grad_out = torch.rand(out.shape, dtype=torch.float64)
    _, grads = _grads(ms_deform_attn, *args, grad_out)
    _, ref_grads = _grads(ms_deform_attn_reference,
                          *[a.double() if a.is_floating_point() else a
                            for a in args], grad_out)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert (g.double() - r).abs().max() <= 1e-2 * r.abs().max()


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 1e-5)])
def test_backward_matches_reference(inputs, dtype, tol):
    args = inputs(N=2, Lq=4, M=3, D=16, P=3, dtype=dtype,
                  loc_range=(-0.1, 1.1))
    grad_out = torch.rand(2, 4, 3 * 16, dtype=torch.float64)
    _, grads = _grads(ms_deform_attn, *args, grad_out)
    _, ref = _grads(_reference64, *args, grad_out)
    for name, g, r in zip(('value', 'locations', 'weights'), grads, ref):
        # Location gradients scale with the map size; compare relatively.
        err = ((g.double() - r).abs().max() / r.abs().max().clamp(min=1)).item()
        assert err <= tol, name


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 1e-5),
                                       (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize('heads', [(1, 2), (4, 4)], ids=['split-queries',
                                                       'one-task-per-head'])
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_work_splits(inputs, dtype, tol, heads, layout):
    """The kernel's strategies: few (batch, head) tasks split queries into
    chunks; values are read in place, with small levels copied, or from
    per-head slabs (see LAYOUTS)."""
    N, M = heads
    Lq, shapes = LAYOUTS[layout]
    args = inputs(N=N, Lq=Lq, M=M, D=32, shapes=shapes, P=2,
                  dtype=dtype, loc_range=(-0.05, 1.05))
    grad_out = torch.rand(N, Lq, M * 32, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, *args, grad_out)
    ref_out, ref = _grads(_reference64, *args, grad_out)
    relative = dtype == torch.bfloat16
    assert (out.double() - ref_out).abs().max() <= tol * (
        ref_out.abs().max() if relative else 1)
    for g, r in zip(grads, ref):
        assert (g.double() - r).abs().max() <= tol * r.abs().max().clamp(min=1)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 1e-5)])
@pytest.mark.parametrize('vectors', [1, 2, 3, 4, 5])
@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_channel_vector_forms(inputs, dtype, tol, vectors, layout):
    """D = 1..4 whole 64-byte vectors of the dtype run register-resident
    forms of both passes (5 vectors: the generic one), on each way of
    reading the values (LAYOUTS), with border and outside points."""
    D = vectors * 64 // dtype.itemsize
    Lq, shapes = LAYOUTS[layout]
    args = inputs(N=2, Lq=Lq, M=2, D=D, shapes=shapes, P=2,
                  dtype=dtype, loc_range=(-0.2, 1.2))
    grad_out = torch.rand(2, Lq, 2 * D, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, *args, grad_out)
    ref_out, ref = _grads(_reference64, *args, grad_out)
    assert (out.double() - ref_out).abs().max() <= tol
    for g, r in zip(grads, ref):
        assert (g.double() - r).abs().max() <= tol * r.abs().max().clamp(min=1)


def test_large_fresh_outputs(inputs):
    """A grad_value over 32 MiB comes straight from mmap (fresh pages, which
    the kernel maps ahead of its tasks): still every element right."""
    args = inputs(N=8, Lq=3, M=8, D=32, shapes=((64, 64), (8, 8)), P=2,
                  dtype=torch.float32, loc_range=(-0.05, 1.05))
    assert args[0].numel() * 4 > 32 * 2**20  # above glibc's mmap threshold
    grad_out = torch.rand(8, 3, 8 * 32, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, *args, grad_out)
    ref_out, ref = _grads(_reference64, *args, grad_out)
    assert (out.double() - ref_out).abs().max() <= 1e-5
    for g, r in zip(grads, ref):
        assert (g.double() - r).abs().max() <= 1e-5 * r.abs().max().clamp(min=1)


@pytest.mark.parametrize('channels,fast', [(4, False), (30, True), (32, True),
                                           (64, True), (71, True)])
def test_gradcheck_float64(inputs, channels, fast):
    # Full Jacobians for the smallest case; gradcheck's fast mode (random
    # projections of the Jacobian) for the others keeps the suite quick.
    args = inputs(N=1, Lq=2, M=2, D=channels, shapes=((3, 2), (2, 1)), P=2,
                  dtype=torch.float64)
    value, shapes, starts, loc, attn = args
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), leaves,
        eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=0.0, fast_mode=fast)


@pytest.mark.parametrize('batch', [1, 3, 65, 130])
def test_any_batch_size(inputs, batch):
    args = inputs(N=batch, Lq=2, M=2, D=4, dtype=torch.float32)
    grad_out = torch.rand(batch, 2, 8, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, *args, grad_out)
    ref_out, ref = _grads(_reference64, *args, grad_out)
    assert (out.double() - ref_out).abs().max() <= 1e-5
    for g, r in zip(grads, ref):
        assert (g.double() - r).abs().max() <= 1e-4 * r.abs().max().clamp(min=1)


def test_single_level(inputs):
    args = inputs(shapes=((5, 7),), dtype=torch.float64)
    assert (ms_deform_attn(*args) - _reference64(*args)).abs().max() <= 1e-12


def test_no_queries(inputs):
    value, shapes, starts, loc, attn = inputs(Lq=0, dtype=torch.float32)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert out.shape == (2, 0, 2 * 8)
    out.sum().backward()
    assert value.grad.shape == value.shape and not value.grad.any()


def test_locations_outside_the_maps(inputs):
    # Far outside, on the border band (-0.5 px .. 0), exactly on the edges,
    # and NaN: zeros outside, like grid_sample's zero padding.
    args = inputs(N=2, Lq=40, dtype=torch.float64, loc_range=(-0.6, 1.6))
    value, shapes, starts, loc, attn = args
    loc[0, 0] = -5.0
    loc[0, 1] = 0.0
    loc[0, 2] = 1.0
    loc[1, 0] = 7.0
    assert (ms_deform_attn(*args) - _reference64(*args)).abs().max() <= 1e-12
    grad_out = torch.rand(2, 40, 16, dtype=torch.float64)
    _, grads = _grads(ms_deform_attn, *args, grad_out)
    _, ref = _grads(_reference64, *args, grad_out)
    for g, r in zip(grads, ref):
        assert (g - r).abs().max() <= 1e-12 * r.abs().max().clamp(min=1)
    assert not grads[1][0, 0].any()  # fully outside: no location gradient


def test_non_contiguous_inputs(inputs):
    value, shapes, starts, loc, attn = inputs(N=3, Lq=5, dtype=torch.float32)
    # Same numbers, other strides: a transposed copy transposed back, and
    # every other element of a larger tensor.
    value_nc = value.transpose(1, 3).contiguous().transpose(1, 3)
    loc_nc = torch.stack([loc, loc], -1)[..., 0]
    attn_nc = attn.repeat_interleave(2, dim=-1)[..., ::2]
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous()
                or attn_nc.is_contiguous())
    out = ms_deform_attn(value_nc, shapes, starts, loc_nc, attn_nc)
    assert torch.equal(out, ms_deform_attn(value, shapes, starts, loc, attn))


def test_mixed_dtypes_are_promoted(inputs):
    value, shapes, starts, loc, attn = inputs(dtype=torch.float32)
    out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn)
    assert out.dtype == torch.float32


def test_backward_is_deterministic(inputs):
    args = inputs(N=2, Lq=64, M=2, D=8, dtype=torch.float32)
    grad_out = torch.rand(2, 64, 16, dtype=torch.float64)
    first = _grads(ms_deform_attn, *args, grad_out)[1]
    second = _grads(ms_deform_attn, *args, grad_out)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_shape_errors_name_the_numbers(inputs):
    value, shapes, starts, loc, attn = inputs()
    with pytest.raises(ValueError, match=r'attention_weights must be'):
        ms_deform_attn(value, shapes, starts, loc, attn[..., :1])
    with pytest.raises(RuntimeError, match=r'spatial_shapes hold 30 positions '
                                           r'but value has S = 29'):
        _op()(value[:, :29], shapes, starts, loc, attn)


def test_opcheck(inputs):
    args = inputs(N=2, Lq=3, M=2, D=4, dtype=torch.float64)
    value, shapes, starts, loc, attn = args
    torch.library.opcheck(_op(), (value.requires_grad_(), shapes, starts,
                               loc.requires_grad_(), attn.requires_grad_()))


def test_torch_compile_fullgraph(inputs):
    value, shapes, starts, loc, attn = inputs(dtype=torch.float32)
    fn = torch.compile(ms_deform_attn, backend='aot_eager', fullgraph=True)
    value.requires_grad_()
    out = fn(value, shapes, starts, loc, attn)
    out.sum().backward()
    expected = ms_deform_attn(value, shapes, starts, loc, attn)
    torch.testing.assert_close(out, expected)
    assert value.grad is not None and value.grad.abs().sum() > 0
