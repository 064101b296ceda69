# GroundingDINO (mmdet) with the CLIP Surgery ViT-B/16 image encoder and
# DeformableCrossAttentionNeck (one map -> strides 8, 16, 32, 64), fine-tuned
# on COCO with the class names as the text prompt.  The other CLIP
# backbones' GroundingDINO configs are this one with the backbone swapped.
#
# Expected files (local; nothing is downloaded):
#   * image encoder: OpenAI CLIP ViT-B/16 `ViT-B-16.pt` (CLIP Surgery's; the
#     backbone's model_name 'ViT-B-16-quickgelu' runs its QuickGELU; for
#     open_clip GELU ViT-B-16 weights set model_name='ViT-B-16')
#     -> model.backbone.pretrained;
#   * text encoder: a `bert-base-uncased` folder (config.json, vocab.txt,
#     model.safetensors or pytorch_model.bin) -> lang_model_name below.
_base_ = [
    'mmdet::grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py',
    '../_base_/plugins_runtime.py',
    '../_base_/models/clip_backbones.py',
    '../_base_/models/deformable_neck.py',
]
load_from = None  # mmdet's base points at a hub URL; we never download
lang_model_name = 'data/bert-base-uncased'  # a local folder
model = dict(
    data_preprocessor=dict(mean=_base_.clip_mean, std=_base_.clip_std,
                           pad_size_divisor=16),
    language_model=dict(name=lang_model_name),
    backbone=dict(_base_.surgeryclip_vitb16, _delete_=True),
    neck=dict(_base_.deformable_neck, _delete_=True),
    # Checkpointed layers need fairscale, which we do not install.
    encoder=dict(num_cp=0))
# The annotation files are checked when loaded (CheckedCocoDataset: mmdet's
# CocoDataset, plus errors for bad boxes and image sizes and one warning
# counting the annotations it drops).
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset'))
test_dataloader = val_dataloader
