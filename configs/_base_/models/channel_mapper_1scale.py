# The single-level comparison (the user's GroundingDINO set-up,
# return_interm_indices=[3] in Open-GroundingDino terms): the backbone's one
# map through a 1x1 conv + GroupNorm, and a DETR that reads one level.
#   _base_ = ['./<the 4-scale config>.py', '../_base_/models/channel_mapper_1scale.py']
#   model = dict(_base_.one_level,
#                neck=dict(_base_.channel_mapper_1scale, _delete_=True))
channel_mapper_1scale = dict(
    type='ChannelMapper',
    in_channels=[768],
    kernel_size=1,
    out_channels=256,
    act_cfg=None,
    norm_cfg=dict(type='GN', num_groups=32),
    num_outs=1)
one_level = dict(
    num_feature_levels=1,
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=1))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=1))))
