# The main demo (`make demo`): tiny DINO + SurgeryCLIP image encoder (the
# `ViT-Tiny-16-test` architecture: width 64, 4 blocks, patch 16, random
# weights) + DeformableCrossAttentionNeck (the stride-16 map + 3 coarser
# levels: strides 16-128), trained on 8 toy images and evaluated on the same
# 8: an overfit check that backbone, neck, deformable attention and head are
# wired right.  The other tiny demos swap one part (backbone, detector, neck or data).
_base_ = [
    '../_base_/models/dino_tiny.py',
    '../_base_/models/surgeryclip_tiny_deformneck.py',
    '../_base_/datasets/toy_detection_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(_base_.surgeryclip_tiny_deformneck)
