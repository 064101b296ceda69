# The main demo (`make demo`): tiny DINO + SurgeryCLIP image encoder (the
# `ViT-Tiny-16-test` architecture: width 64, 4 blocks, patch 16, random
# weights) + DeformableCrossAttentionNeck (1 level -> 4), trained on 8 toy
# images and evaluated on the same 8: an overfit check that backbone, neck,
# deformable attention and head are wired right.
_base_ = [
    '../_base_/models/dino_tiny.py',
    '../_base_/datasets/toy_detection_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(
    # OpenAI CLIP statistics, in 0-255 units (backbone.mean/std x 255).
    data_preprocessor=dict(mean=[122.7709, 116.746, 104.0937],
                           std=[68.5005, 66.6322, 70.3232]),
    backbone=dict(
        type='SurgeryCLIPBackbone',
        model_name='ViT-Tiny-16-test',
        surgery_depth=2,  # the last 2 of 4 blocks get the v-v path
        frozen=False),  # random weights: the demo trains the backbone too
    neck=dict(
        type='DeformableCrossAttentionNeck',
        in_channels=[64],
        out_channels=256,
        out_strides=[16, 32, 64, 128],  # the ViT's stride-16 map + 3 coarser
        num_heads=8,
        num_points=4))
