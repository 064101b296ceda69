"""The CUDA kernel against the float64 reference (needs a GPU).

That the CUDA kernel compiles and links without a GPU is checked by
``test_build.py::test_cuda_library_links``.
"""
import pytest
import torch

from plugins.ops import ms_deform_attn, ms_deform_attn_reference
from plugins.ops.ms_deform_attn import loader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU')


@pytest.fixture(scope='module', autouse=True)
def cuda_kernel():
    if not loader.load('cuda'):
        pytest.fail(f'CUDA kernel unavailable: {loader.status("cuda")}')


def _cuda(args, dtype):
    return [a.cuda().to(dtype) if a.is_floating_point() else a.cuda()
            for a in args]


def _grads(fn, args, grad_out):
    value, shapes, starts, loc, attn = args
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out.to(out))


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12),
                                       (torch.float32, 1e-5),
                                       (torch.bfloat16, 1e-2),
                                       (torch.float16, 1e-2)])
@pytest.mark.parametrize('channels', [4, 30, 32, 71])
def test_matches_reference(inputs, dtype, tol, channels):
    args = inputs(N=3, Lq=7, M=2, D=channels, P=3, loc_range=(-0.1, 1.1))
    grad_out = torch.rand(3, 7, 2 * channels, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, _cuda(args, dtype), grad_out.cuda())
    ref_out, ref = _grads(ms_deform_attn_reference, list(args), grad_out)
    assert out.dtype == dtype and out.is_cuda
    relative = dtype in (torch.bfloat16, torch.float16)
    scale = ref_out.abs().max() if relative else 1.0
    assert (out.cpu().double() - ref_out).abs().max() <= tol * scale
    for g, r in zip(grads, ref):
        assert g.dtype == dtype
        assert (g.cpu().double() - r).abs().max() <= tol * r.abs().max().clamp(min=1)


@pytest.mark.parametrize('batch', [1, 65, 130])
def test_any_batch_size(inputs, batch):
    args = inputs(N=batch, Lq=4, M=2, D=32)
    out = ms_deform_attn(*_cuda(args, torch.float32))
    ref = ms_deform_attn_reference(*args)
    assert (out.cpu().double() - ref).abs().max() <= 1e-5


def test_empty_queries(inputs):
    value, shapes, starts, loc, attn = _cuda(inputs(Lq=0), torch.float32)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    out.sum().backward()
    assert out.shape == (2, 0, 16) and not value.grad.any()


def test_backward_declares_nondeterminism(inputs):
    args = _cuda(inputs(), torch.float32)
    args[0].requires_grad_()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match='ms_deform_attn_backward_cuda'):
            ms_deform_attn(*args).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_opcheck_cuda(inputs):
    value, shapes, starts, loc, attn = _cuda(inputs(), torch.float32)
    torch.library.opcheck(torch.ops.plugins.ms_deform_attn.default,
                          (value.requires_grad_(), shapes, starts,
                           loc.requires_grad_(), attn.requires_grad_()))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_second_device(inputs):
    args = [a.to('cuda:1') for a in inputs(dtype=torch.float32)]
    out = ms_deform_attn(*args)
    assert out.device == torch.device('cuda:1')
    ref = ms_deform_attn_reference(*[a.cpu() for a in args])
    assert (out.cpu() - ref).abs().max() <= 1e-5
