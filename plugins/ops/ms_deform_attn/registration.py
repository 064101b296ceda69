"""The ``plugins::`` op schemas, their fake (meta) kernels, autograd, and
the kernel that loads the compiled library on the op's first call.

The schemas are defined here, in Python, when ``plugins.ops`` is imported
(registries only: nothing is compiled or loaded), so that a program that
names ``plugins::ms_deform_attn`` -- an AOTInductor package, an
``ExportedProgram`` -- resolves it in any process that imported
``plugins.ops``.  The compiled libraries (``csrc/cpu/ops.cpp``,
``csrc/cuda/ops_cuda.cpp``) only add CPU and CUDA kernels.  Until they are
loaded, a call of the op lands in :func:`_forward_first_call`
(``CompositeExplicitAutograd``, which the dispatcher uses only where no
kernel of the device's own key exists): it loads (or builds, once per
machine) the library of the device, whose kernel from then on takes every
call, and runs the op again.
"""
import torch

from . import loader
from .reference import reference_forward

FORWARD = 'plugins::ms_deform_attn'
BACKWARD = 'plugins::ms_deform_attn_backward'

# Kept alive for the process: dropping the Library object would deregister
# the schemas.
_LIB = torch.library.Library('plugins', 'DEF')
_LIB.define('ms_deform_attn(Tensor value, Tensor spatial_shapes, '
            'Tensor level_start_index, Tensor sampling_locations, '
            'Tensor attention_weights) -> Tensor')
_LIB.define('ms_deform_attn_backward(Tensor grad_output, Tensor value, '
            'Tensor spatial_shapes, Tensor level_start_index, '
            'Tensor sampling_locations, Tensor attention_weights) '
            '-> (Tensor, Tensor, Tensor)')

#: dispatch key of each device type whose kernel a library provides
_DEVICE_KEY = {'cpu': 'CPU', 'cuda': 'CUDA'}


def compiled_kernel_ready(qualname: str, kind: str) -> bool:
    """Whether the compiled ``kind`` kernel of ``qualname`` is registered
    (the library is loaded)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        qualname, _DEVICE_KEY[kind])


def _load_for(qualname: str, kind: str) -> bool:
    # The compiled kernel must be registered after a successful load, or
    # calling the op again would land here again.
    return (kind in _DEVICE_KEY and loader.load(kind)
            and compiled_kernel_ready(qualname, kind))


def _forward_first_call(value, spatial_shapes, level_start_index,
                        sampling_locations, attention_weights):
    kind = value.device.type
    if _load_for(FORWARD, kind):
        return torch.ops.plugins.ms_deform_attn.default(
            value, spatial_shapes, level_start_index, sampling_locations,
            attention_weights)
    loader.warn_fallback(kind)
    return reference_forward(value, spatial_shapes, sampling_locations,
                             attention_weights)


def _backward_first_call(grad_output, value, spatial_shapes,
                         level_start_index, sampling_locations,
                         attention_weights):
    kind = value.device.type
    if _load_for(BACKWARD, kind):
        return torch.ops.plugins.ms_deform_attn_backward.default(
            grad_output, value, spatial_shapes, level_start_index,
            sampling_locations, attention_weights)
    raise RuntimeError(
        f'{BACKWARD}: no compiled {kind} kernel '
        f'({loader.status(kind).get("reason", "not loaded")}); for '
        'gradients without it call plugins.ops.ms_deform_attn (which falls '
        'back to the differentiable PyTorch reference)')


@torch.library.register_fake(FORWARD)
def _forward_fake(value, spatial_shapes, level_start_index,
                  sampling_locations, attention_weights):
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    return value.new_empty((N, Lq, M * D))


@torch.library.register_fake(BACKWARD)
def _backward_fake(grad_output, value, spatial_shapes, level_start_index,
                   sampling_locations, attention_weights):
    # The kernels return fresh contiguous gradients (whatever the inputs'
    # strides) in each input's dtype; inductor checks the strides.
    return (value.new_empty(value.shape),
            sampling_locations.new_empty(sampling_locations.shape),
            attention_weights.new_empty(attention_weights.shape))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = (
        torch.ops.plugins.ms_deform_attn_backward(
            grad_output.contiguous(), value, spatial_shapes,
            level_start_index, locations, weights))
    return grad_value, None, None, grad_locations, grad_weights


torch.library.register_autograd(FORWARD, _backward,
                                setup_context=_setup_context)

#: What a gradient of the kernels' gradient raises (they are differentiable
#: once, like an ``autograd.Function`` marked ``once_differentiable``).
DOUBLE_BACKWARD_ERROR = (
    'ms_deform_attn: the compiled kernels are differentiable once; a '
    'gradient of their gradient (create_graph=True, then backward through '
    'it) is not implemented. For second-order gradients run the PyTorch '
    'reference (PLUGINS_MSDA_BACKEND=reference or ms_deform_attn_reference)')


def _backward_setup_context(ctx, inputs, output):
    pass


def _double_backward(ctx, *grads):
    # Without this, autograd's fallback for an op with no autograd formula
    # gave the first-order gradients a grad_fn whose own gradients were
    # silently zero (issue 23, 2b.2).
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


torch.library.register_autograd(BACKWARD, _double_backward,
                                setup_context=_backward_setup_context)

# After the fake kernels (they register a Meta kernel, which must not meet
# another kernel that covers Meta first).
_LIB.impl('ms_deform_attn', _forward_first_call, 'CompositeExplicitAutograd')
_LIB.impl('ms_deform_attn_backward', _backward_first_call,
          'CompositeExplicitAutograd')
