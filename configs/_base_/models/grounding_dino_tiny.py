# A shallow GroundingDINO (mmdet's classes, small numbers) for CPU demos and
# tests.  embed_dims stays 256 (mmdet's decoder hard-codes a 128-feature
# reference-point encoding).  The text encoder loads from a local folder:
# `lang_model_name` must be a path (tools/make_tiny_bert.py writes a tiny
# one; real runs use a downloaded bert-base-uncased folder).  Nothing is
# fetched.  Backbone and neck are set by the configs that inherit this file.
embed_dims = 256
num_levels = 4
lang_model_name = 'data/tiny_bert'
model = dict(
    type='GroundingDINO',
    num_queries=50,
    with_box_refine=True,
    as_two_stage=True,
    num_feature_levels=num_levels,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=False,
        pad_size_divisor=32),
    language_model=dict(
        type='BertModel',
        name=lang_model_name,
        max_tokens=64,
        pad_to_max=False,
        use_sub_sentence_represent=True,
        special_tokens_list=['[CLS]', '[SEP]', '.', '?'],
        add_pooling_layer=False),
    encoder=dict(
        num_layers=2,
        # num_cp > 0 checkpoints layers through fairscale, which we do not
        # install; 0 runs them plainly.
        num_cp=0,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_levels=num_levels,
                               dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=512,
                         ffn_drop=0.0)),
        text_layer_cfg=dict(
            self_attn_cfg=dict(num_heads=4, embed_dims=embed_dims,
                               dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=512,
                         ffn_drop=0.0)),
        fusion_layer_cfg=dict(v_dim=embed_dims, l_dim=embed_dims,
                              embed_dim=512, num_heads=4, init_values=1e-4)),
    decoder=dict(
        num_layers=2,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=8,
                               dropout=0.0),
            cross_attn_text_cfg=dict(embed_dims=embed_dims, num_heads=8,
                                     dropout=0.0),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_heads=8,
                                dropout=0.0),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=512,
                         ffn_drop=0.0)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True,
                             offset=0.0, temperature=20),
    bbox_head=dict(
        type='GroundingDINOHead',
        num_classes=3,
        sync_cls_avg_factor=True,
        contrastive_cfg=dict(max_text_len=64, log_scale=0.0, bias=False),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                group_cfg=dict(dynamic=True, num_groups=None,
                               num_dn_queries=20)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='BinaryFocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=50))
