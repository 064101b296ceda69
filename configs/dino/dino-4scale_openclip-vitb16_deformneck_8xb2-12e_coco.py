# DINO + DeformableCrossAttentionNeck (strides 8-64) on the OpenCLIP ViT-B/16
# image encoder: the SurgeryCLIP config with the backbone swapped.
#
# Expected weights (a local file; nothing is downloaded): open_clip ViT-B-16
# `open_clip_model.safetensors` (e.g. laion2b_s34b_b88k) or
# `open_clip_pytorch_model.bin`, or OpenAI `ViT-B-16.pt` (trained with
# QuickGELU: also set model.backbone.model_name='ViT-B-16-quickgelu'; an
# OpenAI file in a GELU backbone is refused).  Set
# `model.backbone.pretrained` to its path (docs/model_zoo.md).
_base_ = ['./dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(backbone=dict(_base_.openclip_vitb16, _delete_=True))
