# DINO (mmdet) with the CLIP Surgery ViT-B/16 image encoder (single scale,
# stride 16) and DeformableCrossAttentionNeck (the ViT's one map -> strides
# 8, 16, 32, 64, each level refined by deformable attention over all four).
# The other CLIP backbones' DINO configs are this one with the backbone
# swapped.
#
# Expected weights (a local file; nothing is downloaded): OpenAI CLIP
# ViT-B/16 `ViT-B-16.pt` (CLIP Surgery's checkpoint; model_name
# 'ViT-B-16-quickgelu', its activation) or open_clip GELU ViT-B-16 weights
# (then model.backbone.model_name='ViT-B-16'); set
# `model.backbone.pretrained` to its path (docs/model_zoo.md).  The file is
# read before training only: testing needs just this config and the trained
# checkpoint.
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/plugins_runtime.py',
    '../_base_/models/clip_backbones.py',
    '../_base_/models/deformable_neck.py',
]
model = dict(
    data_preprocessor=dict(mean=_base_.clip_mean, std=_base_.clip_std,
                           pad_size_divisor=16),
    backbone=dict(_base_.surgeryclip_vitb16, _delete_=True),
    neck=dict(_base_.deformable_neck, _delete_=True))
# The annotation files are checked when loaded (CheckedCocoDataset: mmdet's
# CocoDataset, plus errors for bad boxes and image sizes and one warning
# counting the annotations it drops).
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
# Frozen by default; when unfrozen the backbone learns at 0.1x the base LR
# (mmdet's DINO config sets custom_keys={'backbone': dict(lr_mult=0.1)}).
