# Deformable-DETR on the OpenCLIP ViT-B/16 image encoder: the SurgeryCLIP
# config with the backbone swapped (same DeformableCrossAttentionNeck,
# strides 8-64).  Set model.backbone.pretrained to a local open_clip ViT-B-16
# weights file or OpenAI `ViT-B-16.pt` (then also
# model.backbone.model_name='ViT-B-16-quickgelu'; docs/model_zoo.md).
_base_ = ['./deformable-detr-refine-twostage_surgeryclip-vitb16_deformneck_16xb2-50e_coco.py']
model = dict(backbone=dict(_base_.openclip_vitb16, _delete_=True))
