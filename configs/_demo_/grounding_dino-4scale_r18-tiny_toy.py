# Stock GroundingDINO with a small random-init ResNet-18 and a tiny local BERT
# on the toy overfit split (prompts: the category names), the reference point
# for the CLIP-backbone GroundingDINO demo.  Run
# `python tools/make_tiny_bert.py` once to write data/tiny_bert.
_base_ = [
    '../_base_/models/grounding_dino_tiny.py',
    '../_base_/models/resnet18_tiny.py',
    '../_base_/datasets/toy_grounding_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(backbone=_base_.resnet18_tiny,
             neck=dict(_base_.resnet18_channel_mapper, bias=True))
