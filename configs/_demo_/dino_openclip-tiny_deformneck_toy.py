# Tiny DINO + OpenCLIP ViT (tiny test architecture, random init) +
# DeformableCrossAttentionNeck (1 level -> 4), overfitting 8 toy images on CPU.
_base_ = [
    '../_base_/models/dino_tiny.py',
    '../_base_/datasets/toy_detection_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(
    # OpenAI CLIP statistics, in 0-255 units (OpenCLIPBackbone.mean/std x 255).
    data_preprocessor=dict(mean=[122.7709, 116.746, 104.0937],
                           std=[68.5005, 66.6322, 70.3232]),
    backbone=dict(
        type='OpenCLIPBackbone',
        model_name='ViT-Tiny-16-test',
        frozen=False),  # random weights: the demo trains the backbone too
    neck=dict(
        type='DeformableCrossAttentionNeck',
        in_channels=[64],
        out_channels=256,
        num_extra_levels=3,
        n_heads=8,
        n_points=4))
