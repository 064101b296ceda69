# DINO + DeformableCrossAttentionNeck on ConceptCLIP's image tower (SigLIP
# so400m/14: one stride-14 map of width 1152 -> strides 7, 14, 28, 56, the
# stride-14 counterpart of the ViT-B/16 configs' 8-64: 7 by a transposed
# conv, 28 and 56 by strided convs; the *_deformneck-s14-112 variant makes
# 14, 28, 56, 112).  The SurgeryCLIP config with backbone, normalisation and
# neck input swapped.
#
# Expected weights (a local folder; nothing is downloaded): the ConceptCLIP
# Hugging Face folder as downloaded (`model.safetensors` or sharded
# `model.safetensors.index.json`; its `config.json` is checked).  Set
# `model.backbone.pretrained` to its path (docs/model_zoo.md).
# The so400m tower at mmdet's 1333x800 sees 57 x 96 = 5,472 tokens per
# image: consider `window_size=14` on the backbone (windowed attention; the
# last block of each quarter stays global; docs/backbones.md).
_base_ = ['./dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(data_preprocessor=_base_.conceptclip_data_preprocessor,
             backbone=dict(_base_.conceptclip_so400m14, _delete_=True),
             neck=_base_.deformable_neck_so400m14)
