# Tiny two-stage Deformable-DETR + SurgeryCLIP (ViT-Tiny-16-test, random) +
# DeformableCrossAttentionNeck (1 level -> 4) on the 8-image toy overfit split.
_base_ = [
    '../_base_/models/deformable_detr_tiny.py',
    '../_base_/datasets/toy_detection_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(
    data_preprocessor=dict(mean=[122.7709, 116.746, 104.0937],
                           std=[68.5005, 66.6322, 70.3232]),
    backbone=dict(type='SurgeryCLIPBackbone', model_name='ViT-Tiny-16-test',
                  surgery_depth=2, frozen=False),
    neck=dict(type='DeformableCrossAttentionNeck', in_channels=[64],
              out_channels=256, num_heads=8, num_points=4))
