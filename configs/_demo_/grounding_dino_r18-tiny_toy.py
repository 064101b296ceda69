# Stock GroundingDINO with a small random-init ResNet-18 and a tiny local BERT
# on the toy data (prompts: the category names).  Run
# `python tools/make_tiny_bert.py` once to write data/tiny_bert.
_base_ = [
    '../_base_/models/grounding_dino_tiny.py',
    '../_base_/datasets/toy_grounding.py',
    '../_base_/schedules/toy_iters.py',
]
model = dict(
    backbone=dict(
        type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3),
        frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False, style='pytorch', init_cfg=None),
    neck=dict(
        type='ChannelMapper', in_channels=[128, 256, 512], kernel_size=1,
        out_channels=256, act_cfg=None, bias=True,
        norm_cfg=dict(type='GN', num_groups=32), num_outs=4))
