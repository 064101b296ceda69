# A shallow two-stage Deformable-DETR with box refinement (mmdet's classes,
# the small numbers of detr_tiny.py) for CPU demos and tests.  Backbone and
# neck are set by the configs that inherit this file.
_base_ = ['./detr_tiny.py']
model = dict(
    _base_.tiny_detr,
    type='DeformableDETR',
    encoder=dict(
        num_layers=_base_.tiny_num_layers,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=_base_.embed_dims,
                               num_levels=_base_.num_levels,
                               batch_first=True),
            ffn_cfg=_base_.tiny_ffn_cfg)),
    decoder=dict(
        num_layers=_base_.tiny_num_layers,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=_base_.embed_dims, num_heads=8,
                               dropout=0.0, batch_first=True),
            cross_attn_cfg=dict(embed_dims=_base_.embed_dims,
                                num_levels=_base_.num_levels,
                                batch_first=True),
            ffn_cfg=_base_.tiny_ffn_cfg),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=_base_.embed_dims // 2,
                             normalize=True, offset=-0.5),
    bbox_head=dict(
        _base_.tiny_box_losses,
        type='DeformableDETRHead',
        num_classes=_base_.tiny_num_classes,
        embed_dims=_base_.embed_dims,
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=2.0)),
    train_cfg=_base_.tiny_train_cfg)
