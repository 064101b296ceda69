# Deformable-DETR + DeformableCrossAttentionNeck on ConceptCLIP's image tower (SigLIP
# so400m/14, width 1152, stride 14 -> strides 7, 14, 28, 56; see
# configs/dino/dino-4scale_conceptclip-so400m14_deformneck_8xb2-12e_coco.py).
# The SurgeryCLIP config with backbone, normalisation and neck input
# swapped.  Set model.backbone.pretrained to the local ConceptCLIP folder
# (docs/model_zoo.md).
_base_ = ['./deformable-detr-refine-twostage_surgeryclip-vitb16_deformneck_16xb2-50e_coco.py']
model = dict(data_preprocessor=_base_.conceptclip_data_preprocessor,
             backbone=dict(_base_.conceptclip_so400m14, _delete_=True),
             neck=_base_.deformable_neck_so400m14)
