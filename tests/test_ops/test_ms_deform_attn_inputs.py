"""Bad and unusual inputs of ``ms_deform_attn`` on every backend here: the
compiled CPU kernel and the PyTorch reference (``PLUGINS_MSDA_BACKEND=
reference``, and ``ms_deform_attn_reference`` called directly) refuse the
same calls with the same message and agree on NaN/inf locations (issue 23,
section 2b).  The CUDA kernel's share is in test_ms_deform_attn_cuda.py."""
import subprocess
import sys

import pytest
import torch

from plugins.ops import ms_deform_attn, ms_deform_attn_reference
from plugins.ops.ms_deform_attn.function import BACKEND_ENV

pytestmark = pytest.mark.usefixtures('kernel_loaded')

BACKENDS = ['kernel', 'reference', 'reference-direct']


@pytest.fixture(params=BACKENDS)
def op(request, monkeypatch):
    """``ms_deform_attn`` on one backend."""
    if request.param == 'reference-direct':
        return ms_deform_attn_reference
    monkeypatch.setenv(BACKEND_ENV,
                       'reference' if request.param == 'reference' else 'auto')
    return ms_deform_attn


@pytest.mark.parametrize('moved', [('sampling_locations', 'attention_weights'),
                                   ('spatial_shapes', 'level_start_index'),
                                   ('attention_weights',)])
def test_inputs_off_value_device_are_refused(op, inputs, moved):
    """Was: locations and weights on ``meta`` gave a CPU tensor of garbage
    (the fake kernel ran), metadata on ``meta`` gave zeros."""
    names = ('value', 'spatial_shapes', 'level_start_index',
             'sampling_locations', 'attention_weights')
    args = dict(zip(names, inputs(dtype=torch.float32)))
    for name in moved:
        args[name] = args[name].to('meta')
    wrong = ', '.join(f'{name} on meta' for name in moved)
    with pytest.raises(ValueError, match=rf"every input must be on value's "
                                         rf"device \(cpu\); got {wrong}$"):
        op(*args.values())


def test_all_on_meta_still_infers_the_shape(inputs):
    # Shape inference (e.g. a model built on the meta device) keeps working.
    args = [a.to('meta') for a in inputs(dtype=torch.float32)]
    out = ms_deform_attn(*args)
    assert out.device.type == 'meta' and out.shape == (2, 3, 16)


@pytest.mark.parametrize('convert,kind', [(lambda t: t.tolist(), 'builtins.list'),
                                          (lambda t: t.numpy(), 'numpy.ndarray')])
@pytest.mark.parametrize('position', [0, 1, 3])
def test_non_tensors_are_a_type_error(op, inputs, convert, kind, position):
    args = list(inputs(dtype=torch.float32))
    name = ('value', 'spatial_shapes', 'level_start_index',
            'sampling_locations')[position]
    args[position] = convert(args[position])
    with pytest.raises(TypeError, match=rf'{name} must be a torch.Tensor, '
                                        rf'got {kind}'):
        op(*args)


def test_fractional_spatial_shapes_are_refused(op, inputs):
    """Was: (4.9, 5.0), (2.0, 3.5) ran silently as (4, 5), (2, 3)."""
    value, _, _, loc, attn = inputs(shapes=((4, 5), (2, 3)),
                                    dtype=torch.float32)
    starts = torch.tensor([0, 20])
    shapes = torch.tensor([[4.9, 5.0], [2.0, 3.5]])
    with pytest.raises(ValueError, match=r'spatial_shapes must hold whole '
                                         r'numbers.*\[0, 0\] = 4\.9'):
        op(value, shapes, starts, loc, attn)
    with pytest.raises(ValueError, match=r'level_start_index must hold whole'):
        op(value, shapes.trunc(), starts + 0.5, loc, attn)
    with pytest.raises(TypeError, match=r'must hold integers \(int64\), got '
                                        r'torch.bool'):
        op(value, shapes > 0, starts, loc, attn)
    # Whole numbers in a float (or int32) tensor are fine.
    expected = op(value, shapes.long(), starts, loc, attn)
    torch.testing.assert_close(op(value, shapes.trunc(), starts.float(), loc,
                                  attn), expected)
    torch.testing.assert_close(op(value, shapes.int(), starts.int(), loc,
                                  attn), expected)


@pytest.mark.parametrize('shapes,starts,match', [
    (((6, 4), (3, 2)), (0, 25), r'level_start_index\[1\] = 25 but the levels '
                                r'before it hold 24 positions'),
    (((6, 4), (3, 2)), (1, 24), r'level_start_index\[0\] = 1'),
    (((6, 4), (4, 2)), (0, 24), r'hold 32 positions but value has S = 30'),
    (((6, 4), (-3, 2)), (0, 24), r'spatial_shapes\[1\] = \(-3, 2\) must be '
                                 r'non-negative'),
    (((6, 4), (2**32 + 1, 1)), (0, 24), r'at most 2\^31 - 1'),
])
def test_level_errors_are_the_same_on_every_backend(op, inputs, shapes,
                                                    starts, match):
    """Was: the reference accepted a level_start_index the kernels refuse,
    and failed inside split_with_sizes on the others."""
    value, _, _, loc, attn = inputs()  # S = 30
    with pytest.raises(RuntimeError, match=match):
        op(value, torch.tensor(shapes), torch.tensor(starts), loc, attn)


def test_no_levels_agree(inputs):
    """``L = 0``: nothing to sample (was: the reference failed in
    torch.stack)."""
    value, _, _, loc, attn = inputs(dtype=torch.float64)
    value = value[:, :0]
    loc, attn = loc[:, :, :, :0], attn[:, :, :, :0]
    shapes, starts = torch.zeros(0, 2, dtype=torch.long), torch.zeros(
        0, dtype=torch.long)
    kernel = ms_deform_attn(value, shapes, starts, loc, attn)
    reference = ms_deform_attn_reference(value, shapes, starts, loc, attn)
    assert kernel.shape == reference.shape == (2, 3, 16)
    assert not kernel.any() and not reference.any()


@pytest.mark.parametrize('shapes', [((6, 4), (0, 3), (2, 2)), ((0, 0),),
                                    ((6, 4), (3, 0))])
def test_empty_levels_agree(inputs, shapes):
    """An empty map samples zeros on every backend (was: the reference
    failed in grid_sample), gradients included."""
    args = inputs(shapes=shapes, dtype=torch.float64, loc_range=(-0.1, 1.1))
    grad_out = torch.rand(2, 3, 16, dtype=torch.float64)
    out, grads = _grads(ms_deform_attn, *args, grad_out)
    ref_out, ref_grads = _grads(ms_deform_attn_reference, *args, grad_out)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def _grads(fn, value, shapes, starts, loc, attn, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    # (an empty value has no use in the reference's graph: a zero gradient)
    return out, torch.autograd.grad(out, leaves, grad_out, allow_unused=True,
                                    materialize_grads=True)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_non_finite_locations_count_as_outside(op, inputs, dtype):
    """NaN and +-inf locations (either coordinate) sample zeros and get zero
    gradient on every backend, like a point far outside the map (was: the
    reference gave NaN where the kernels give zeros)."""
    value, shapes, starts, loc, attn = inputs(N=2, Lq=6, dtype=dtype,
                                              loc_range=(-0.1, 1.1))
    nan, inf = float('nan'), float('inf')
    bad = torch.zeros(loc.shape[:-1], dtype=torch.bool)
    # (n, q, m, level, point), coordinate(s) made non-finite, value
    for index, coord, special in (((0, 0, 0, 0, 0), 0, nan),
                                  ((1, 1, 1, 1, 1), 1, inf),
                                  ((0, 2, 1, 0, 1), slice(None), -inf),
                                  ((1, 3, 0, 1, 0), 0, nan),
                                  ((1, 3, 0, 1, 0), 1, inf)):
        loc[index + (coord,)] = special
        bad[index] = True
    far = torch.where(bad[..., None], torch.full_like(loc, -7.0), loc)
    grad_out = torch.rand(2, 6, 16, dtype=dtype,
                          generator=torch.Generator().manual_seed(1))
    out, grads = _grads(op, value, shapes, starts, loc, attn, grad_out)
    ref_out, ref_grads = _grads(op, value, shapes, starts, far, attn, grad_out)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    grad_loc, grad_attn = grads[1], grads[2]
    assert not grad_loc[bad].any() and not grad_attn[bad].any()
    # Backends agree with each other, not only with themselves.
    kernel_out, kernel_grads = _grads(ms_deform_attn, value, shapes, starts,
                                      loc, attn, grad_out)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, kernel_out, **tol)
    for g, k in zip(grads, kernel_grads):
        torch.testing.assert_close(g, k, **tol)


def test_double_backward_raises_instead_of_zeros(inputs):
    """Was: the first-order gradient had a grad_fn whose gradients were
    silently 0.0 (the reference gives e.g. 55.1 and 381.7)."""
    value, shapes, starts, loc, attn = inputs(dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    grad_loc, = torch.autograd.grad((out ** 2).sum(), leaves[1],
                                    create_graph=True)
    assert grad_loc.requires_grad
    with pytest.raises(RuntimeError, match=r'differentiable once.*'
                                           r'PLUGINS_MSDA_BACKEND=reference'):
        torch.autograd.grad(grad_loc.sum(), leaves[1:])
    # The reference is twice differentiable: that is what the message
    # points to, so it must hold.
    out = ms_deform_attn_reference(leaves[0], shapes, starts, leaves[1],
                                   leaves[2])
    grad_loc, = torch.autograd.grad((out ** 2).sum(), leaves[1],
                                    create_graph=True)
    second = torch.autograd.grad(grad_loc.sum(), leaves[1:])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in second)
    # A first-order gradient alone (no create_graph) is unaffected.
    out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert torch.autograd.grad(out.sum(), leaves[0])[0].grad_fn is None


_COLD_COMPILE = r"""
import torch
from plugins.ops.ms_deform_attn import loader, ms_deform_attn
assert not loader._state, 'the op must not be loaded before the compile'
g = torch.Generator().manual_seed(0)
shapes = torch.tensor([[4, 3], [2, 2]])
starts = torch.tensor([0, 12])
value = torch.rand(1, 16, 2, 4, generator=g, requires_grad=True)
loc = torch.rand(1, 3, 2, 2, 2, 2, generator=g, requires_grad=True)
attn = torch.rand(1, 3, 2, 2, 2, generator=g, requires_grad=True)
fn = torch.compile(ms_deform_attn, backend='aot_eager', fullgraph=True)
out = fn(value, shapes, starts, loc, attn)
grads = torch.autograd.grad(out.square().sum(), (value, loc, attn))
eager = ms_deform_attn(value, shapes, starts, loc, attn)
eager_grads = torch.autograd.grad(eager.square().sum(), (value, loc, attn))
torch.testing.assert_close(out, eager)
for a, b in zip(grads, eager_grads):
    torch.testing.assert_close(a, b)
print('cold compile ok', loader.status('cpu')['source'])
"""


def test_torch_compile_fullgraph_from_a_cold_start(repo_root):
    """A fresh process whose first call of the op is a fullgraph compile,
    forward and backward (was: ``Skip calling torch.compiler.disable()'d
    function`` until one eager call had loaded the extension)."""
    done = subprocess.run([sys.executable, '-c', _COLD_COMPILE],
                          cwd=repo_root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'cold compile ok' in done.stdout
    assert 'none' not in done.stdout  # the compiled kernel, not a fallback


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cpu_metadata_with_a_cuda_value_is_refused(inputs):
    """The CUDA kernel reads the metadata on the device: CPU metadata is
    refused by the shared check, naming both tensors."""
    value, shapes, starts, loc, attn = inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"every input must be on value's "
                                         r"device \(cuda:0\); got "
                                         r"spatial_shapes on cpu, "
                                         r"level_start_index on cpu$"):
        ms_deform_attn(value.cuda(), shapes, starts, loc.cuda(), attn.cuda())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('deterministic', [False, True])
def test_non_finite_locations_on_cuda_match_the_reference(inputs,
                                                          deterministic):
    """The CUDA kernel's share of 2b.6: NaN/inf locations count as outside,
    with the float-atomic and the deterministic (fixed-point) backward."""
    value, shapes, starts, loc, attn = inputs(N=2, Lq=6, D=32,
                                              dtype=torch.float32,
                                              loc_range=(-0.1, 1.1))
    loc[0, 0, 0, 0, 0, 0] = float('nan')
    loc[1, 1, 1, 1, 1, 1] = float('inf')
    loc[0, 2, 1, 0, 1] = -float('inf')
    grad_out = torch.rand(2, 6, 64, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _grads(ms_deform_attn_reference, value, shapes,
                                starts, loc, attn, grad_out)
    torch.use_deterministic_algorithms(deterministic)
    try:
        out, grads = _grads(ms_deform_attn, *(t.cuda() for t in (
            value, shapes, starts, loc, attn, grad_out)))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.cpu(), r, rtol=1e-4, atol=1e-5)
