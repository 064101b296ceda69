# The single-level comparison for dino-4scale_openclip-vitb16_deformneck_8xb2-12e_coco.py:
# the ViT's one stride-16 map through a 1x1 ChannelMapper, DINO with
# num_feature_levels=1 (the user's GroundingDINO set-up).
_base_ = [
    './dino-4scale_openclip-vitb16_deformneck_8xb2-12e_coco.py',
    '../_base_/models/channel_mapper_1scale.py',
]
model = dict(_base_.one_level,
             neck=dict(_base_.channel_mapper_1scale, _delete_=True))
