# The single-level comparison for the main demo: the ViT map alone through a
# 1x1 ChannelMapper, DINO with num_feature_levels=1.
_base_ = [
    './dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py',
    '../_base_/models/channel_mapper_1scale.py',
]
model = dict(_base_.one_level,
             neck=dict(_base_.channel_mapper_1scale, _delete_=True,
                       in_channels=[_base_.clip_tiny_width]))
