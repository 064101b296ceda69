"""The one-line config switch to our deformable attention kernels."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from ...models.layers import convert_ms_deform_attention


@HOOKS.register_module()
class MSDeformAttentionHook(Hook):
    """Run a detector's deformable attention on ``plugins.ops`` kernels.

    Add to any mmdet config with DINO / Deformable-DETR / Grounding-DINO
    layers::

        custom_hooks = [dict(type='MSDeformAttentionHook')]

    Before the run starts (before weights are initialised or a checkpoint
    is loaded) every mmcv ``MultiScaleDeformableAttention`` of the model
    becomes an :class:`MSDeformAttention` (see
    :func:`convert_ms_deform_attention`): same parameters and keys, our CPU
    and CUDA kernels underneath.  Outside a Runner, call
    ``convert_ms_deform_attention(model)`` directly.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        switched = convert_ms_deform_attention(model)
        print_log(f'MSDeformAttentionHook: {switched} MultiScaleDeformable'
                  f'Attention modules now run on plugins.ops.ms_deform_attn',
                  logger='current')
