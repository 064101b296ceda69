# What every tiny DETR of the demos shares: 256-d embeddings (mmdet 3.3's
# DINO decoder hard-codes a 128-feature sine encoding of the reference
# points, so its ref_point_head only fits embed_dims=256), two encoder and
# two decoder layers with 512-wide FFNs, 50 queries, the toy data's 3
# classes, mmdet's DETR losses and matcher.  deformable_detr_tiny.py and
# dino_tiny.py build their models from these (grounding_dino_tiny.py
# inherits dino_tiny.py); full-size settings live in mmdet's own configs,
# which configs/{dino,deformable_detr,grounding_dino}/ inherit.
embed_dims = 256
num_levels = 4
tiny_detr = dict(  # the keys the detectors take by these names
    num_queries=50,
    with_box_refine=True,
    as_two_stage=True,
    num_feature_levels=num_levels,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],  # ImageNet; CLIP backbones
        std=[58.395, 57.12, 57.375],  # override (clip_backbones.py)
        bgr_to_rgb=True,
        pad_size_divisor=32),
    test_cfg=dict(max_per_img=50))
tiny_num_layers = 2
tiny_ffn_cfg = dict(embed_dims=embed_dims, feedforward_channels=512,
                    ffn_drop=0.0)
tiny_num_classes = 3
tiny_box_losses = dict(  # bbox_head keys
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0))
tiny_train_cfg = dict(
    assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ]))
