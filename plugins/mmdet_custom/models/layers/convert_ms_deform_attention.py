"""Switch an mmdet model's deformable attention to our kernels in place."""
from mmcv.ops import MultiScaleDeformableAttention
from torch import nn

from .ms_deform_attention import MSDeformAttention


def convert_ms_deform_attention(model: nn.Module) -> int:
    """Make every mmcv ``MultiScaleDeformableAttention`` in ``model`` an
    :class:`MSDeformAttention`, in place.

    mmdet's DINO / Deformable-DETR / Grounding-DINO layers construct mmcv's
    class directly (not through a registry), so they cannot be configured
    to build ours.  ``MSDeformAttention`` is a subclass that adds no state,
    so switching the class of the existing modules keeps every parameter,
    buffer and hook object as it is: optimisers, DDP wrappers and loaded
    checkpoints stay valid, and state-dict keys do not change.

    Args:
        model (nn.Module): Any model, e.g. a built mmdet detector.

    Returns:
        int: The number of modules switched.
    """
    switched = 0
    for module in model.modules():
        if type(module) is MultiScaleDeformableAttention:
            module.__class__ = MSDeformAttention
            switched += 1
    return switched
