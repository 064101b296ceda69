"""How close a kernel must come to the float64 reference (shared by the
CUDA tests and the CUDA-emulation tests).

Every tolerance is relative to the scale of the tensor it checks (its
largest absolute reference value): an absolute floor would hide a whole
tensor of wrong gradients whose values are all below it (at D=1 every
``grad_weights`` is below 0.01, so ``1e-2 * max(|ref|, 1)`` accepted a
kernel that returned zeros; ``test_cuda_emu.py`` plants that bug).
"""
import torch

REDUCED = (torch.float16, torch.bfloat16)
# (forward, gradients): float64 and float32 accumulate in their own
# precision; float16/bfloat16 accumulate in float32 but round the output
# and grad_value to 8 or 11 mantissa bits.
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5),
       torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-2, 1e-2)}
NAMES = ('grad value', 'grad locations', 'grad weights')


def scaled_error(got, ref):
    """max |got - ref| / max |ref| (0 when both are all zeros or empty)."""
    if ref.numel() == 0:
        return 0.0
    err = (got.detach().cpu().double() - ref.detach().cpu().double()).abs().max()
    scale = ref.detach().cpu().double().abs().max()
    if err == 0:
        return 0.0
    return float(err / scale) if scale > 0 else float('inf')


def assert_close_to_reference(out, grads, ref_out, ref_grads, dtype):
    """out and (grad_value, grad_locations, grad_weights) within TOL[dtype]
    of the reference, relative to each reference tensor's scale."""
    tol_out, tol_grad = TOL[dtype]
    err = scaled_error(out, ref_out)
    assert err <= tol_out, f'output error {err:.3g} (relative) > {tol_out}'
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert g.shape == r.shape, f'{name}: shape {tuple(g.shape)} != {tuple(r.shape)}'
        err = scaled_error(g, r)
        assert err <= tol_grad, f'{name} error {err:.3g} (relative) > {tol_grad}'
