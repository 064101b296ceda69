"""The CUDA kernel against the float64 reference and our CPU kernel (needs a
GPU; every test here is marked ``gpu`` and skips with its reason without one).

That the CUDA kernel compiles and links without a GPU is checked by
``test_build.py::test_cuda_library_links``.  ``make gpu-check`` runs this
file first on a GPU machine.

Tolerances (msda_tolerance.py) are relative to the scale of each checked
tensor, with no absolute floor: the emulator tests (test_cuda_emu.py) show
that the floor let an all-zero grad_weights through at D=1.

Every comparison is on the *same* inputs: the reference gets the inputs
already rounded to the kernel's dtype (rounding bfloat16 locations moves
points across cells, where the location gradient jumps, so comparing
against the unrounded inputs would fail a correct kernel).  Every random
draw is seeded.
"""
import os
import sys

import pytest
import torch

from plugins.ops import ms_deform_attn, ms_deform_attn_reference
from plugins.ops.ms_deform_attn import loader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from msda_tolerance import REDUCED, assert_close_to_reference, scaled_error  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='needs a CUDA GPU')]



@pytest.fixture(scope='module', autouse=True)
def cuda_kernel():
    if not loader.load('cpu'):
        pytest.fail(f'CPU kernel unavailable: {loader.status("cpu")}')
    if not loader.load('cuda'):
        pytest.fail(f'CUDA kernel unavailable: {loader.status("cuda")}')
    torch.ops.plugins.ms_deform_attn_cuda_level_errors(0)  # clear the flag
    yield
    # No test may have fed the kernels inconsistent levels unnoticed.
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(0) == 0


def _rounded(args, dtype, coord_dtype=None):
    """The inputs rounded to (dtype, coord_dtype), on the CPU, and the same
    on the GPU."""
    coord_dtype = coord_dtype or dtype
    value, shapes, starts, loc, attn = args
    cpu = [value.to(dtype), shapes, starts, loc.to(coord_dtype),
           attn.to(coord_dtype)]
    return cpu, [a.cuda() for a in cpu]


def _grads(fn, args, grad_out):
    value, shapes, starts, loc, attn = args
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out.to(out))


def _reference64(value, shapes, starts, loc, attn):
    return ms_deform_attn_reference(value.double(), shapes, starts,
                                    loc.double(), attn.double())


def _grad_out(shape, seed=1):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


_assert_close = assert_close_to_reference


def _levels(count):
    return ((13, 17), (7, 9), (4, 5), (2, 3), (1, 1))[:count]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32,
                                   torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize('channels', [1, 7, 30, 32, 64, 71, 96, 128, 256])
def test_matches_reference(inputs, dtype, channels):
    """Every channel count (power of two and not: 16-byte packs or single
    channels, warp-shuffle or atomic reductions) in every dtype."""
    args = inputs(N=3, Lq=7, M=2, D=channels, P=3, shapes=_levels(3),
                  loc_range=(-0.1, 1.1), seed=channels)
    cpu, gpu = _rounded(args, dtype)
    grad_out = _grad_out((3, 7, 2 * channels))
    out, grads = _grads(ms_deform_attn, gpu, grad_out.cuda())
    ref_out, ref = _grads(_reference64, cpu, grad_out)
    assert out.dtype == dtype and out.is_cuda
    assert all(g.dtype == dtype for g in grads)
    _assert_close(out, grads, ref_out, ref, dtype)


@pytest.mark.parametrize('levels', [1, 2, 3, 4, 5])
@pytest.mark.parametrize('points', [1, 4, 8])
def test_levels_and_points(inputs, levels, points):
    args = inputs(N=2, Lq=9, M=3, D=32, P=points, shapes=_levels(levels),
                  loc_range=(-0.1, 1.1), seed=10 * levels + points)
    cpu, gpu = _rounded(args, torch.float32)
    grad_out = _grad_out((2, 9, 96))
    out, grads = _grads(ms_deform_attn, gpu, grad_out.cuda())
    ref_out, ref = _grads(_reference64, cpu, grad_out)
    _assert_close(out, grads, ref_out, ref, torch.float32)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32,
                                   torch.bfloat16, torch.float16],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize('channels', [7, 32, 71])
def test_matches_cpu_kernel(inputs, dtype, channels):
    """Same inputs, same dtype: the CUDA and CPU kernels agree (both
    accumulate in float32/float64)."""
    args = inputs(N=2, Lq=11, M=2, D=channels, P=4, shapes=_levels(4),
                  loc_range=(-0.1, 1.1), seed=channels)
    cpu, gpu = _rounded(args, dtype)
    grad_out = _grad_out((2, 11, 2 * channels))
    out, grads = _grads(ms_deform_attn, gpu, grad_out.cuda())
    cpu_out, cpu_grads = _grads(ms_deform_attn, cpu, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1e-2
    assert scaled_error(out, cpu_out) <= tol
    for g, c in zip(grads, cpu_grads):
        assert g.dtype == c.dtype
        assert scaled_error(g, c) <= tol


@pytest.mark.parametrize('dtype', REDUCED, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize('channels', [7, 32, 71])
def test_mixed_precision(inputs, dtype, channels):
    """Half/bfloat16 value with float32 locations and weights: output and
    grad_value in value's dtype, the other gradients float32; against the
    reference and the CPU kernel on the same inputs."""
    args = inputs(N=2, Lq=8, M=2, D=channels, P=4,
                  shapes=((12, 167), (6, 84), (3, 42)), loc_range=(-0.05, 1.05),
                  seed=channels)
    cpu, gpu = _rounded(args, dtype, torch.float32)
    grad_out = _grad_out((2, 8, 2 * channels))
    out, grads = _grads(ms_deform_attn, gpu, grad_out.cuda())
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    ref_out, ref = _grads(_reference64, cpu, grad_out)
    _assert_close(out, grads, ref_out, ref, dtype)
    cpu_out, cpu_grads = _grads(ms_deform_attn, cpu, grad_out)
    assert scaled_error(out, cpu_out) <= 1e-2
    for g, c in zip(grads, cpu_grads):
        assert scaled_error(g, c) <= 1e-2


@pytest.mark.parametrize('channels,fast', [(4, False), (7, True), (32, True),
                                           (71, True)])
def test_gradcheck_float64(inputs, channels, fast):
    args = inputs(N=1, Lq=2, M=2, D=channels, shapes=((3, 2), (2, 1)), P=2,
                  dtype=torch.float64, device='cuda', seed=channels)
    value, shapes, starts, loc, attn = args
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), leaves,
        eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=1e-12, fast_mode=fast)


@pytest.mark.parametrize('channels', [8, 30, 32])
def test_misaligned_and_non_contiguous(inputs, channels):
    """Storage offset by one element (no 16-byte packs) and strided views:
    same numbers as the contiguous call."""
    value, shapes, starts, loc, attn = [
        a.cuda() for a in inputs(N=2, Lq=5, M=2, D=channels, P=2,
                                 dtype=torch.float32, seed=3)]
    grad_out = _grad_out((2, 5, 2 * channels)).float().cuda()
    base_out, base = _grads(ms_deform_attn, (value, shapes, starts, loc, attn),
                            grad_out)
    flat = torch.empty(value.numel() + 1, device='cuda')
    value_mis = flat[1:].view_as(value).copy_(value)
    assert value_mis.data_ptr() % 16 != 0
    loc_nc = torch.stack([loc, loc], -1)[..., 0]
    attn_nc = attn.repeat_interleave(2, dim=-1)[..., ::2]
    value_nc = value.transpose(1, 3).contiguous().transpose(1, 3)
    for v, l, a in ((value_mis, loc, attn), (value_nc, loc_nc, attn_nc)):
        out, grads = _grads(ms_deform_attn, (v, shapes, starts, l, a), grad_out)
        torch.testing.assert_close(out, base_out, rtol=1e-6, atol=1e-7)
        for g, b in zip(grads, base):
            assert g.is_contiguous()
            torch.testing.assert_close(g, b, rtol=1e-5, atol=1e-6)


def test_non_default_stream(inputs):
    args = [a.cuda() for a in inputs(N=2, Lq=64, D=32, dtype=torch.float32)]
    expected = ms_deform_attn(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = ms_deform_attn(*args)
        value = args[0].detach().requires_grad_()
        ms_deform_attn(value, *args[1:]).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    assert value.grad is not None and value.grad.abs().sum() > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_second_device(inputs):
    args = [a.to('cuda:1') for a in inputs(dtype=torch.float32)]
    value = args[0].requires_grad_()
    out = ms_deform_attn(*args)
    assert out.device == torch.device('cuda:1')
    out.sum().backward()
    assert value.grad.device == torch.device('cuda:1')
    ref = ms_deform_attn_reference(*[a.detach().cpu() for a in args])
    assert (out.detach().cpu() - ref).abs().max() <= 1e-5
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(1) == 0


def test_locations_nan_edges_and_far_outside(inputs):
    args = inputs(N=2, Lq=40, D=32, dtype=torch.float64, loc_range=(-0.6, 1.6))
    value, shapes, starts, loc, attn = args
    loc[0, 0] = -5.0
    loc[0, 1] = 0.0
    loc[0, 2] = 1.0
    loc[1, 0] = 7.0
    loc[1, 1] = float('nan')
    cpu = [value, shapes, starts, loc, attn]
    gpu = [a.cuda() for a in cpu]
    grad_out = _grad_out((2, 40, 64))
    out, grads = _grads(ms_deform_attn, gpu, grad_out.cuda())
    cpu_out, cpu_grads = _grads(ms_deform_attn, cpu, grad_out)
    assert torch.allclose(out.cpu(), cpu_out, rtol=0, atol=1e-12)
    for g, c in zip(grads, cpu_grads):
        assert torch.allclose(g.cpu(), c, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert not grads[1][0, 0].any()  # fully outside: no location gradient


@pytest.mark.parametrize('sizes', [dict(N=0), dict(Lq=0), dict(P=0)],
                         ids=['N=0', 'Lq=0', 'P=0'])
def test_empty_problems(inputs, sizes):
    value, shapes, starts, loc, attn = [
        a.cuda() for a in inputs(dtype=torch.float32, **sizes)]
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert out.shape == (value.shape[0], loc.shape[1], 16)
    out.sum().backward()
    assert value.grad.shape == value.shape and not value.grad.any()


@pytest.mark.parametrize('shapes', [((6, 4), (0, 5), (3, 2)),
                                    ((6, 4), (1, 1)), ((1, 7), (5, 1))],
                         ids=['empty-level', '1x1-level', 'one-wide'])
def test_empty_and_degenerate_levels(inputs, shapes):
    # Against the CPU kernel (grid_sample, the reference, rejects empty maps).
    args = inputs(N=2, Lq=6, D=32, shapes=shapes, dtype=torch.float64,
                  loc_range=(-0.2, 1.2))
    grad_out = _grad_out((2, 6, 64))
    out, grads = _grads(ms_deform_attn, [a.cuda() for a in args], grad_out.cuda())
    cpu_out, cpu_grads = _grads(ms_deform_attn, args, grad_out)
    _assert_close(out, grads, cpu_out, cpu_grads, torch.float64)


def test_inconsistent_levels_are_skipped_and_flagged(inputs, monkeypatch):
    """A level reaching past S reads and writes nothing (no out-of-bounds
    atomics) and sets the flag; PLUGINS_MSDA_CHECK_LEVELS=1 raises instead,
    with the CPU checks' message."""
    value, shapes, starts, loc, attn = [a.cuda() for a in
                                        inputs(dtype=torch.float32)]
    bad = torch.tensor([[6, 4], [30, 2]], device='cuda')  # 24 + 60 > S = 30
    torch.ops.plugins.ms_deform_attn_cuda_level_errors(0)
    value = value.requires_grad_()
    out = torch.ops.plugins.ms_deform_attn(value, bad, starts, loc, attn)
    # Taken (synced) before the next call, which would raise for it.
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(0) == 1
    torch.autograd.grad(out.sum(), value)
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(0) == 1
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(0) == 0  # cleared
    # Level 0 is still sampled: as if level 1 contributed nothing.
    only0 = attn.clone()
    only0[:, :, :, 1] = 0
    expected = ms_deform_attn_reference(value.detach().cpu(), shapes.cpu(),
                                        starts.cpu(), loc.cpu(), only0.cpu())
    assert (out.detach().cpu() - expected).abs().max() <= 1e-5
    monkeypatch.setenv('PLUGINS_MSDA_CHECK_LEVELS', '1')
    with pytest.raises(RuntimeError, match='hold 84 positions but value has S = 30'):
        torch.ops.plugins.ms_deform_attn(value, bad, starts, loc, attn)


def test_bad_level_raises_at_a_later_call_on_a_side_stream(inputs):
    """Without any explicit query, a bad level surfaces as an error at a
    later call (here after a sync, so at the very next one), also when the
    bad call ran on a non-blocking side stream."""
    value, shapes, starts, loc, attn = [a.cuda() for a in
                                        inputs(dtype=torch.float32)]
    bad = torch.tensor([[6, 4], [30, 2]], device='cuda')
    torch.ops.plugins.ms_deform_attn_cuda_level_errors(0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ms_deform_attn(value, bad, starts, loc, attn)
    torch.cuda.synchronize()
    with pytest.raises(RuntimeError, match='an earlier call got spatial_shapes'):
        ms_deform_attn(value, shapes, starts, loc, attn)
    ms_deform_attn(value, shapes, starts, loc, attn)  # reported once
    assert torch.ops.plugins.ms_deform_attn_cuda_level_errors(0) == 0


@pytest.mark.parametrize('channels', [32, 71])
def test_deterministic_backward(inputs, channels):
    """Under torch.use_deterministic_algorithms(True) (mmengine's
    deterministic=True) the backward runs (fixed-point integer sums), is
    bit-identical run after run, and matches the float-atomics result."""
    args = [a.cuda() for a in inputs(N=2, Lq=300, M=4, D=channels, P=4,
                                     shapes=_levels(4), dtype=torch.float32,
                                     seed=5)]
    grad_out = _grad_out((2, 300, 4 * channels)).float().cuda()
    _, fast = _grads(ms_deform_attn, args, grad_out)
    torch.use_deterministic_algorithms(True)
    try:
        _, first = _grads(ms_deform_attn, args, grad_out)
        _, second = _grads(ms_deform_attn, args, grad_out)
        _, half = _grads(ms_deform_attn, _rounded(args, torch.bfloat16,
                                                  torch.float32)[1],
                         grad_out.bfloat16())
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, f in zip(first, second, fast):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, f, rtol=1e-5, atol=1e-6)
    # Same values in a misaligned copy (single-channel loads): same bits.
    value, shapes, starts, loc, attn = args
    flat = torch.empty(value.numel() + 1, device='cuda')
    value_mis = flat[1:].view_as(value).copy_(value)
    torch.use_deterministic_algorithms(True)
    try:
        _, moved = _grads(ms_deform_attn, (value_mis, shapes, starts, loc, attn),
                          grad_out)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, m in zip(first, moved):
        assert torch.equal(a, m)
    assert [g.dtype for g in half] == [torch.bfloat16, torch.float32,
                                       torch.float32]


def test_deterministic_backward_non_finite(inputs):
    value, shapes, starts, loc, attn = [a.cuda() for a in
                                        inputs(dtype=torch.float32)]
    value[0, 0, 0, 0] = float('inf')
    torch.use_deterministic_algorithms(True)
    try:
        _, grads = _grads(ms_deform_attn, (value, shapes, starts, loc, attn),
                          torch.ones(2, 3, 16, device='cuda'))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.isnan(grads[1]).all()  # loudly not finite, never garbage


def test_opcheck_cuda(inputs):
    value, shapes, starts, loc, attn = [a.cuda() for a in
                                        inputs(dtype=torch.float32)]
    torch.library.opcheck(torch.ops.plugins.ms_deform_attn.default,
                          (value.requires_grad_(), shapes, starts,
                           loc.requires_grad_(), attn.requires_grad_()))
    grad_out = torch.rand(2, 3, 16, device='cuda')
    value_t = value.detach().transpose(1, 2).contiguous().transpose(1, 2)
    torch.library.opcheck(torch.ops.plugins.ms_deform_attn_backward.default,
                          (grad_out, value_t, shapes, starts, loc.detach(),
                           attn.detach()))


def test_torch_compile_inductor(inputs):
    args = [a.cuda() for a in inputs(N=2, Lq=16, D=32, dtype=torch.float32)]
    grad_out = _grad_out((2, 16, 64)).float().cuda()
    fn = torch.compile(ms_deform_attn, backend='inductor', fullgraph=True)
    out, grads = _grads(fn, args, grad_out)
    ref_out, ref = _grads(ms_deform_attn, args, grad_out)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_cuda_graph_capture_and_replay(inputs):
    value, shapes, starts, loc, attn = [
        a.cuda() for a in inputs(N=2, Lq=32, D=32, dtype=torch.float32)]
    value.requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        for _ in range(2):
            value.grad = None
            ms_deform_attn(value, shapes, starts, loc, attn).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    value.grad = None
    with torch.cuda.graph(graph):
        out = ms_deform_attn(value, shapes, starts, loc, attn)
        out.sum().backward()
    with torch.no_grad():
        loc.copy_(torch.rand(loc.shape, generator=torch.Generator().manual_seed(9)).cuda())
    graph.replay()
    torch.cuda.synchronize()
    expected = ms_deform_attn(value.detach(), shapes, starts, loc, attn)
    torch.testing.assert_close(out, expected)
    assert value.grad.abs().sum() > 0


def test_over_2_31_elements():
    """value and grad_value of more than 2^31 elements (64-bit indexing;
    about 13 GB of bfloat16 on the device): level 0 holds elements 0 to
    2^31 - 1, level 1 (also sampled) those from 2^31 on."""
    N, M, D, Lq, P = 1, 8, 32, 64, 4
    H, W = 2048, 4096  # H * W * M * D = 2^31: level 1 starts past it
    shapes = torch.tensor([[H, W], [64, 64]], device='cuda')
    starts = torch.tensor([0, H * W], device='cuda')
    S = H * W + 64 * 64
    g = torch.Generator(device='cuda').manual_seed(0)
    value = torch.rand(N, S, M, D, device='cuda', dtype=torch.bfloat16,
                       generator=g)
    assert value.numel() > 2**31
    loc = torch.rand(N, Lq, M, 2, P, 2, device='cuda', generator=g)
    loc[:, :, :, 0] = 0.999  # the last rows of level 0, just below 2^31
    attn = torch.rand(N, Lq, M, 2, P, device='cuda', generator=g)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    out.float().sum().backward()
    # Check a slice against the reference on the rows actually sampled.
    sub_v = value.detach()[:, :, :1].float().cpu()
    ref = ms_deform_attn_reference(sub_v, shapes.cpu(), starts.cpu(),
                                   loc[:, :, :1].cpu(), attn[:, :, :1].cpu())
    assert (out[:, :, :D].float().cpu() - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert value.grad[:, H * W - W:H * W].float().abs().sum() > 0
    # Every element from 2^31 on is in level 1, which every point samples.
    assert H * W * M * D == 2**31
    assert value.grad[:, H * W:].float().abs().sum() > 0


def test_any_batch_size(inputs):
    for batch in (1, 65, 130):
        args = inputs(N=batch, Lq=4, M=2, D=32, seed=batch)
        out = ms_deform_attn(*_rounded(args, torch.float32)[1])
        ref = ms_deform_attn_reference(*args)
        assert (out.cpu().double() - ref).abs().max() <= 1e-5
