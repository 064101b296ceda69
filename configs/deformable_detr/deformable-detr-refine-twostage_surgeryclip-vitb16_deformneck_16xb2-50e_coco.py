# Two-stage Deformable-DETR with box refinement (mmdet) on the CLIP Surgery
# ViT-B/16 image encoder and DeformableCrossAttentionNeck (one map -> strides
# 8, 16, 32, 64).
#
# Expected weights (a local file; nothing is downloaded): OpenAI CLIP ViT-B/16
# `ViT-B-16.pt` (CLIP Surgery's; runs with QuickGELU automatically) or
# open_clip ViT-B-16 weights; set model.backbone.pretrained (see
# docs/model_zoo.md); keep model_name='ViT-B-16'.
_base_ = [
    'mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
    '../_base_/plugins_runtime.py',
    '../_base_/models/clip_vitb16_backbone.py',
]
model = dict(
    data_preprocessor=dict(mean={{_base_.clip_mean}},
                           std={{_base_.clip_std}},
                           pad_size_divisor=16),
    backbone=dict(
        _delete_=True,
        type='SurgeryCLIPBackbone',
        model_name='ViT-B-16',
        surgery_depth=6,
        pretrained=None,  # path to the weights file above
        frozen=True),  # or frozen=False, train_last_n_blocks=4
    neck=dict(
        _delete_=True,
        type='DeformableCrossAttentionNeck',
        in_channels=[{{_base_.clip_vitb_width}}],
        out_channels=256,
        in_strides=[16],
        # strides 8-64 (as detrex's DINO + ViTDet): 8 by a transposed conv
        # from the stride-16 map, 32 and 64 by strided convs; the
        # *_deformneck-s16-128 variant keeps the earlier 16, 32, 64, 128.
        out_strides=[8, 16, 32, 64],
        num_heads=8,
        num_points=4))
# When unfrozen, the backbone learns at 0.1x the base LR.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone': dict(lr_mult=0.1),
    'sampling_offsets': dict(lr_mult=0.1),
    'reference_points': dict(lr_mult=0.1)
}))
