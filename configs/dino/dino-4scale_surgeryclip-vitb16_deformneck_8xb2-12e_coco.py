# DINO (mmdet) with the CLIP Surgery ViT-B/16 image encoder (single scale, stride 16)
# and DeformableCrossAttentionNeck (the ViT's one map -> strides 8, 16, 32,
# 64, each level refined by deformable attention over all four).
#
# Expected weights (a local file; nothing is downloaded):
#   OpenAI CLIP ViT-B/16 archive `ViT-B-16.pt` (CLIP Surgery's checkpoint), or
#   open_clip `open_clip_pytorch_model.bin` / `open_clip_model.safetensors` of
#   ViT-B-16. Set `model.backbone.pretrained` to its path (see
#   docs/model_zoo.md). Keep `model_name='ViT-B-16'` for either: OpenAI files
#   switch the backbone to QuickGELU when they load (logged at INFO), and the
#   position embedding is resampled bilinearly as in CLIP Surgery (the
#   backbone's default `pos_embed_interp='clip_surgery'`).
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
        type='SurgeryCLIPBackbone',
        model_name='ViT-B-16',  # OpenAI's .pt runs with QuickGELU by itself
        surgery_depth=6,
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
