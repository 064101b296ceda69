# DINO (mmdet) with the OpenCLIP ViT-B/16 image encoder (single scale, stride 16)
# and DeformableCrossAttentionNeck (the ViT's one map -> strides 8, 16, 32,
# 64, each level refined by deformable attention over all four).
#
# Expected weights (a local file; nothing is downloaded):
#   open_clip ViT-B-16 `open_clip_model.safetensors` (e.g.
#   laion2b_s34b_b88k) or `open_clip_pytorch_model.bin`, or OpenAI `ViT-B-16.pt`
#   (trained with QuickGELU: the backbone switches to it when an OpenAI file
#   loads, keep model_name='ViT-B-16').
#   Set `model.backbone.pretrained` to its path (see docs/model_zoo.md).
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/plugins_runtime.py',
    '../_base_/models/clip_vitb16_backbone.py',
]
model = dict(
    data_preprocessor=dict(mean={{_base_.clip_mean}},
                           std={{_base_.clip_std}},
                           pad_size_divisor=16),
    backbone=dict(
        _delete_=True,
        type='OpenCLIPBackbone',
        model_name='ViT-B-16',
        pretrained=None,  # path to the weights file above
        frozen=True),  # or frozen=False, train_last_n_blocks=4
    neck=dict(
        _delete_=True,
        type='DeformableCrossAttentionNeck',
        in_channels=[768],
        out_channels=256,
        in_strides=[16],
        # strides 8-64 (as detrex's DINO + ViTDet): 8 by a transposed conv
        # from the stride-16 map, 32 and 64 by strided convs; the
        # *_deformneck-s16-128 variant keeps the earlier 16, 32, 64, 128.
        out_strides=[8, 16, 32, 64],
        num_heads=8,
        num_points=4))
# Frozen by default; when unfrozen the backbone learns at 0.1x the base LR
# (mmdet's DINO config sets custom_keys={'backbone': dict(lr_mult=0.1)}).
