# As the main demo, with a tiny two-stage Deformable-DETR (box refinement)
# instead of DINO: SurgeryCLIP (ViT-Tiny-16-test, random) +
# DeformableCrossAttentionNeck (strides 16-128) on the 8-image toy overfit
# split.
_base_ = [
    '../_base_/models/deformable_detr_tiny.py',
    '../_base_/models/surgeryclip_tiny_deformneck.py',
    '../_base_/datasets/toy_detection_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(_base_.surgeryclip_tiny_deformneck)
