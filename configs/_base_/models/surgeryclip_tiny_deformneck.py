# The tiny demos' image side: the SurgeryCLIP image encoder at test size
# (`ViT-Tiny-16-test`: width 64, 4 blocks, patch 16, random weights, trained
# with the detector) with CLIP's input normalisation, and
# DeformableCrossAttentionNeck on its stride-16 map (+ 3 coarser levels:
# strides 16-128).  A tiny detector config takes it with
#   model = dict(_base_.surgeryclip_tiny_deformneck)
_base_ = ['./clip_backbones.py', './deformable_neck.py']
surgeryclip_tiny_deformneck = dict(
    data_preprocessor=dict(mean=_base_.clip_mean, std=_base_.clip_std),
    backbone=_base_.surgeryclip_tiny,
    neck=dict(_base_.deformable_neck,
              in_channels=[_base_.clip_tiny_width],
              out_strides=[16, 32, 64, 128]))
