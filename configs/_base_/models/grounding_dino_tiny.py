# A shallow GroundingDINO for CPU demos and tests: the tiny DINO (mmdet's
# GroundingDINO is a DINO) plus a text encoder, text-image fusion in the
# encoder, text cross-attention in the decoder and a contrastive head.
# The text encoder loads from a local folder: `lang_model_name` must be a
# path (tools/make_tiny_bert.py writes a tiny one; real runs use a
# downloaded bert-base-uncased folder).  Nothing is fetched.  Backbone and
# neck are set by the configs that inherit this file.
_base_ = ['./dino_tiny.py']
embed_dims = _base_.embed_dims
lang_model_name = 'data/tiny_bert'
model = dict(
    type='GroundingDINO',
    data_preprocessor=dict(pad_mask=False),
    language_model=dict(
        type='BertModel',
        name=lang_model_name,
        max_tokens=64,
        pad_to_max=False,
        use_sub_sentence_represent=True,
        special_tokens_list=['[CLS]', '[SEP]', '.', '?'],
        add_pooling_layer=False),
    encoder=dict(
        # num_cp > 0 checkpoints layers through fairscale, which we do not
        # install; 0 runs them plainly.
        num_cp=0,
        text_layer_cfg=dict(
            self_attn_cfg=dict(num_heads=4, embed_dims=embed_dims,
                               dropout=0.0),
            ffn_cfg=_base_.tiny_ffn_cfg),
        fusion_layer_cfg=dict(v_dim=embed_dims, l_dim=embed_dims,
                              embed_dim=512, num_heads=4, init_values=1e-4)),
    decoder=dict(layer_cfg=dict(
        cross_attn_text_cfg=dict(embed_dims=embed_dims, num_heads=8,
                                 dropout=0.0))),
    bbox_head=dict(
        type='GroundingDINOHead',
        contrastive_cfg=dict(max_text_len=64, log_scale=0.0, bias=False)),
    train_cfg=dict(assigner=dict(match_costs=[
        dict(type='BinaryFocalLossCost', weight=2.0),
        dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
        dict(type='IoUCost', iou_mode='giou', weight=2.0)
    ])))
