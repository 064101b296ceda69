# Stock mmdet DINO with a small random-init ResNet-18 on the toy data: the
# plain-mmdet reference point for the CLIP-backbone demos (and the fast
# config the resume tests train).
_base_ = [
    '../_base_/models/dino_tiny.py',
    '../_base_/models/resnet18_tiny.py',
    '../_base_/datasets/toy_detection.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(backbone=_base_.resnet18_tiny,
             neck=_base_.resnet18_channel_mapper)
