# Tiny GroundingDINO + SurgeryCLIP (ViT-Tiny-16-test, random) + deformable neck
# on the toy data, prompted with the category names ("circle. square.
# triangle."); the text encoder is the tiny local BERT written by
# `python tools/make_tiny_bert.py` (data/tiny_bert).
_base_ = [
    '../_base_/models/grounding_dino_tiny.py',
    '../_base_/datasets/toy_grounding.py',
    '../_base_/schedules/toy_iters.py',
]
train_dataloader = dict(
    batch_size=2, dataset=dict(ann_file='annotations/instances_train8.json'))
val_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_train8.json',
                 data_prefix=dict(img='images/train/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='data/toy/annotations/instances_train8.json')
test_evaluator = val_evaluator
model = dict(
    data_preprocessor=dict(mean=[122.7709, 116.746, 104.0937],
                           std=[68.5005, 66.6322, 70.3232]),
    backbone=dict(type='SurgeryCLIPBackbone', model_name='ViT-Tiny-16-test',
                  surgery_depth=2, frozen=False),
    neck=dict(type='DeformableCrossAttentionNeck', in_channels=[64],
              out_channels=256, num_heads=8, num_points=4))
# GroundingDINO's text-image alignment needs a longer schedule than DINO on
# the toy data (its loss is still falling steeply at 300 iterations).
max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
