# A shallow DINO (mmdet's classes, the small numbers of detr_tiny.py) for
# CPU demos and tests.  Backbone and neck are set by the configs that
# inherit this file.
_base_ = ['./detr_tiny.py']
model = dict(
    _base_.tiny_detr,
    type='DINO',
    encoder=dict(
        num_layers=_base_.tiny_num_layers,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=_base_.embed_dims,
                               num_levels=_base_.num_levels, num_heads=8,
                               dropout=0.0),
            ffn_cfg=_base_.tiny_ffn_cfg)),
    decoder=dict(
        num_layers=_base_.tiny_num_layers,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=_base_.embed_dims, num_heads=8,
                               dropout=0.0),
            cross_attn_cfg=dict(embed_dims=_base_.embed_dims,
                                num_levels=_base_.num_levels, num_heads=8,
                                dropout=0.0),
            ffn_cfg=_base_.tiny_ffn_cfg),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=_base_.embed_dims // 2,
                             normalize=True, offset=0.0, temperature=20),
    bbox_head=dict(
        _base_.tiny_box_losses,
        type='DINOHead',
        num_classes=_base_.tiny_num_classes,
        embed_dims=_base_.embed_dims,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0)),
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                group_cfg=dict(dynamic=True, num_groups=None,
                               num_dn_queries=20)),
    train_cfg=_base_.tiny_train_cfg)
