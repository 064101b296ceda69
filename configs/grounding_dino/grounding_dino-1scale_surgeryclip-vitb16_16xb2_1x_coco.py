# The user's GroundingDINO set-up: the ViT's last map only
# (return_interm_indices=[3], num_feature_levels=1 in Open-GroundingDino
# terms), through a 1x1 ChannelMapper with a bias.
_base_ = [
    './grounding_dino-4scale_surgeryclip-vitb16_deformneck_16xb2_1x_coco.py',
    '../_base_/models/channel_mapper_1scale.py',
]
model = dict(_base_.one_level,
             neck=dict(_base_.channel_mapper_1scale, _delete_=True,
                       bias=True))
