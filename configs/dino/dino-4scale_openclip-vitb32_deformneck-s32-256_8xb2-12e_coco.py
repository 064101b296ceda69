# DINO + openclip-vitb32 with the earlier pyramid: the ViT's own map and
# three coarser levels (strides 32, 64, 128, 256) instead of the default
# 8-64 (see docs/detectors.md, "Pyramid strides").
_base_ = ['./dino-4scale_openclip-vitb32_deformneck_8xb2-12e_coco.py']
model = dict(neck=dict(out_strides=[32, 64, 128, 256]))
