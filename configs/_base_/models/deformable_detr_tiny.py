# A shallow two-stage Deformable-DETR with box refinement (mmdet's classes,
# small numbers) for CPU demos and tests.  Backbone and neck are set by the
# configs that inherit this file.
embed_dims = 256
num_levels = 4
model = dict(
    type='DeformableDETR',
    num_queries=50,
    num_feature_levels=num_levels,
    with_box_refine=True,
    as_two_stage=True,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_levels=num_levels,
                               batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=512,
                         ffn_drop=0.0))),
    decoder=dict(
        num_layers=2,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8,
                               dropout=0.0, batch_first=True),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_levels=num_levels,
                                batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=512,
                         ffn_drop=0.0)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True,
                             offset=-0.5),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=3,
        embed_dims=embed_dims,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=50))
