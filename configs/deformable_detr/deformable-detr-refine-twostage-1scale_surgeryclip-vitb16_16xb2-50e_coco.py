# The single-level comparison: the ViT's stride-16 map alone through a 1x1
# ChannelMapper, Deformable-DETR with num_feature_levels=1.
_base_ = [
    './deformable-detr-refine-twostage_surgeryclip-vitb16_deformneck_16xb2-50e_coco.py',
    '../_base_/models/channel_mapper_1scale.py',
]
model = dict(_base_.one_level,
             neck=dict(_base_.channel_mapper_1scale, _delete_=True))
