# Two-stage Deformable-DETR with box refinement (mmdet) on the CLIP Surgery
# ViT-B/16 image encoder and DeformableCrossAttentionNeck (one map -> strides
# 8, 16, 32, 64).  The other CLIP backbones' Deformable-DETR configs are this
# one with the backbone swapped.
#
# Expected weights (a local file; nothing is downloaded): OpenAI CLIP ViT-B/16
# `ViT-B-16.pt` (CLIP Surgery's; model_name 'ViT-B-16-quickgelu' runs its
# QuickGELU) or open_clip GELU ViT-B-16 weights (model_name='ViT-B-16'); set
# model.backbone.pretrained (see docs/model_zoo.md).
_base_ = [
    'mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
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
# When unfrozen, the backbone learns at 0.1x the base LR.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone': dict(lr_mult=0.1),
    'sampling_offsets': dict(lr_mult=0.1),
    'reference_points': dict(lr_mult=0.1)
}))
