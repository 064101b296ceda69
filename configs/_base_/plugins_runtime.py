# What every config of this project adds to mmdet's runtime (for configs that
# inherit mmdet's own files, e.g. `mmdet::dino/...`).  Importing the mmdet
# wing registers every plugin (and the runner below); `import plugins` alone
# registers nothing.
custom_imports = dict(
    imports=['plugins.mmdet_custom'], allow_failed_imports=False)
# Checkpoints are written to a temporary file and renamed (no truncated
# checkpoint after a kill); they carry torch's RNG so --resume is bit-exact.
runner_type = 'AtomicCheckpointRunner'
# MSDeformAttentionHook runs mmdet's deformable attention layers on our
# kernels (plugins.ops) instead of mmcv's (grid_sample on CPU).
custom_hooks = [dict(type='RNGStateHook'), dict(type='MSDeformAttentionHook')]
