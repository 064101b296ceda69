# DINO + conceptclip-so400m14 with the coarser pyramid: the ViT's own map and
# three coarser levels (strides 14, 28, 56, 112) instead of the default
# 7-56 (see docs/detectors.md, "Pyramid strides").
_base_ = ['./dino-4scale_conceptclip-so400m14_deformneck_8xb2-12e_coco.py']
model = dict(neck=dict(out_strides=[14, 28, 56, 112]))
