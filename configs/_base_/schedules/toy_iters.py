# A short iteration-based schedule (and its runtime) for CPU demos and tests.
# Iterations (not epochs) make `--resume` checkpoints land at exact, comparable points.
_base_ = ['../default_runtime.py']

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=False)
auto_scale_lr = dict(base_batch_size=4)
# CPU demos: gloo works with and without GPUs (tools/dist_train.sh CONFIG 2).
env_cfg = dict(dist_cfg=dict(backend='gloo'))
