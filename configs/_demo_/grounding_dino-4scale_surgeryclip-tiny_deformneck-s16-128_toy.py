# As the main demo, with a tiny GroundingDINO prompted with the category
# names ("circle. square. triangle."); the text encoder is the tiny local
# BERT written by `python tools/make_tiny_bert.py` (data/tiny_bert).
_base_ = [
    '../_base_/models/grounding_dino_tiny.py',
    '../_base_/models/surgeryclip_tiny_deformneck.py',
    '../_base_/datasets/toy_grounding_overfit8.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(_base_.surgeryclip_tiny_deformneck)
# GroundingDINO's text-image alignment needs a longer schedule than DINO on
# the toy data (its loss is still falling steeply at 300 iterations).
max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
