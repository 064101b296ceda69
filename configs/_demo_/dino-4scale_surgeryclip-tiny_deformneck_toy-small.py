# The main demo's detector (tiny DINO + SurgeryCLIP ViT-Tiny-16-test +
# deformable neck, same schedule and seed) on the small-object toy data
# (configs/_base_/datasets/toy_small_overfit8.py), with the 8-64 pyramid.
# tools/benchmark_detectors.py trains it against 16-128 and without the
# deformable refinement (neck num_layers=0).
_base_ = [
    '../_base_/models/dino_tiny.py',
    '../_base_/models/surgeryclip_tiny_deformneck.py',
    '../_base_/datasets/toy_small_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(
    _base_.surgeryclip_tiny_deformneck,
    neck=dict(_base_.surgeryclip_tiny_deformneck.neck,
              out_strides=[8, 16, 32, 64]))
