# Runtime shared by every config: mmdet's defaults plus `custom_imports`, so
# the config also runs under mmdet's own tools/train.py and tools/test.py.
default_scope = 'mmdet'
custom_imports = dict(imports=['plugins'], allow_failed_imports=False)
# Checkpoints are written to a temporary file and renamed: a kill during a
# save never leaves a truncated checkpoint behind.
runner_type = 'AtomicCheckpointRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

# Checkpoints carry torch's RNG state so --resume continues bit-exactly.
# MSDeformAttentionHook runs mmdet's deformable attention layers on our
# kernels (plugins.ops) instead of mmcv's (grid_sample on CPU).
custom_hooks = [dict(type='RNGStateHook'), dict(type='MSDeformAttentionHook')]

log_level = 'INFO'
load_from = None
resume = False
