# DINO + DeformableCrossAttentionNeck (strides 8-64) on the BiomedCLIP
# ViT-B/16 image encoder: the SurgeryCLIP config with the backbone swapped.
#
# Expected weights (a local file; nothing is downloaded):
# `open_clip_pytorch_model.bin` from the
# BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 folder.  Set
# `model.backbone.pretrained` to its path (docs/model_zoo.md).
_base_ = ['./dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(backbone=dict(_base_.biomedclip_vitb16, _delete_=True))
