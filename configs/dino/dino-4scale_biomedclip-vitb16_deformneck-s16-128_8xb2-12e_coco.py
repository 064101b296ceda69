# DINO + biomedclip-vitb16 with the earlier pyramid: the ViT's own map and
# three coarser levels (strides 16, 32, 64, 128) instead of the default
# 8-64 (see docs/detectors.md, "Pyramid strides").
_base_ = ['./dino-4scale_biomedclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(neck=dict(out_strides=[16, 32, 64, 128]))
