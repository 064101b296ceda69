"""Fake (meta) kernels and autograd of the compiled ``plugins::`` ops.

The op schemas are defined in C++ (``csrc/cpu/ops.cpp``, which names this
module with ``m.set_python_module``); this module adds what ``torch.compile``
and autograd need.  The loader imports it right after loading ``_C_cpu``.
"""
import torch

FORWARD = 'plugins::ms_deform_attn'
BACKWARD = 'plugins::ms_deform_attn_backward'


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
