# DINO + DeformableCrossAttentionNeck on the OpenCLIP ViT-B/32 image encoder
# (one stride-32 map -> strides 8, 16, 32, 64: 8 and 16 by transposed convs,
# 64 by a strided conv; the *_deformneck-s32-256 variant keeps the earlier
# 32, 64, 128, 256).
#
# Expected weights (a local file; nothing is downloaded): open_clip ViT-B-32
# `open_clip_model.safetensors` (e.g. laion2b_s34b_b79k) or
# `open_clip_pytorch_model.bin`, or OpenAI `ViT-B-32.pt` (trained with
# QuickGELU: also set model.backbone.model_name='ViT-B-32-quickgelu').  Set `model.backbone.pretrained` to
# its path (docs/model_zoo.md).
_base_ = ['./dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(_base_.openclip_vitb32, _delete_=True),
    neck=dict(in_strides=[32]))
