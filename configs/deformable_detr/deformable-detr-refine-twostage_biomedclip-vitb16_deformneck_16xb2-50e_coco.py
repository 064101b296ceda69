# Deformable-DETR on the BiomedCLIP ViT-B/16 image encoder: the SurgeryCLIP config with the
# backbone swapped (same DeformableCrossAttentionNeck, strides 8-64).
# Set model.backbone.pretrained to a local weights file (docs/model_zoo.md).
_base_ = ['./deformable-detr-refine-twostage_surgeryclip-vitb16_deformneck_16xb2-50e_coco.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='BiomedCLIPBackbone',
        pretrained=None,  # BiomedCLIP `open_clip_pytorch_model.bin`
        frozen=True))
