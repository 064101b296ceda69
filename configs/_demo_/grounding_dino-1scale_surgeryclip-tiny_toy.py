# Single-level GroundingDINO demo (the user's Open-GroundingDino set-up:
# return_interm_indices=[3], num_feature_levels=1).
_base_ = ['./grounding_dino_surgeryclip-tiny_deformneck_toy.py']
model = dict(
    num_feature_levels=1,
    neck=dict(_delete_=True, type='ChannelMapper', in_channels=[64],
              kernel_size=1, out_channels=256, act_cfg=None, bias=True,
              norm_cfg=dict(type='GN', num_groups=32), num_outs=1),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=1))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=1))))
