# The single-level comparison for dino-4scale_openclip-vitb16_deformneck_8xb2-12e_coco.py:
# one 16-stride level through a 1x1 ChannelMapper, DINO with
# num_feature_levels=1 (the user's GroundingDINO set-up: return_interm_indices=[3]).
_base_ = ['./dino-4scale_openclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(
    num_feature_levels=1,
    neck=dict(
        _delete_=True,
        type='ChannelMapper',
        in_channels=[768],
        kernel_size=1,
        out_channels=256,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=1),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=1))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=1))))
