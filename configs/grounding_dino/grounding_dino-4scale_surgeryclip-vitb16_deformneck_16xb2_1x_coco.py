# GroundingDINO (mmdet) with the CLIP Surgery ViT-B/16 image encoder and
# DeformableCrossAttentionNeck (one map -> strides 8, 16, 32, 64), fine-tuned
# on COCO with the class names as the text prompt.
#
# Expected files (local; nothing is downloaded):
#   * image encoder: OpenAI CLIP ViT-B/16 `ViT-B-16.pt` (CLIP Surgery's; runs
#     with QuickGELU automatically, keep model_name='ViT-B-16') or open_clip
#     ViT-B-16 weights -> model.backbone.pretrained;
#   * text encoder: a `bert-base-uncased` folder (config.json, vocab.txt,
#     model.safetensors or pytorch_model.bin) -> lang_model_name below.
_base_ = [
    'mmdet::grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py',
    '../_base_/plugins_runtime.py',
    '../_base_/models/clip_vitb16_backbone.py',
]
load_from = None  # mmdet's base points at a hub URL; we never download
lang_model_name = 'data/bert-base-uncased'  # a local folder
model = dict(
    data_preprocessor=dict(mean={{_base_.clip_mean}},
                           std={{_base_.clip_std}},
                           pad_size_divisor=16),
    language_model=dict(name=lang_model_name),
    backbone=dict(
        _delete_=True,
        type='SurgeryCLIPBackbone',
        model_name='ViT-B-16',
        surgery_depth=6,
        pretrained=None,  # path to the image-encoder weights above
        frozen=True),  # or frozen=False, train_last_n_blocks=4
    neck=dict(
        _delete_=True,
        type='DeformableCrossAttentionNeck',
        in_channels=[{{_base_.clip_vitb_width}}],
        out_channels=256,
        in_strides=[16],
        # strides 8-64 (as detrex's DINO + ViTDet): 8 by a transposed conv
        # from the stride-16 map, 32 and 64 by strided convs; the
        # *_deformneck-s16-128 variant keeps the earlier 16, 32, 64, 128.
        out_strides=[8, 16, 32, 64],
        num_heads=8,
        num_points=4),
    # Checkpointed layers need fairscale, which we do not install.
    encoder=dict(num_cp=0))
