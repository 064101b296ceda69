# Deformable-DETR + surgeryclip-vitb16 with the earlier pyramid: the ViT's own map and
# three coarser levels (strides 16, 32, 64, 128) instead of the default
# 8-64 (see docs/detectors.md, "Pyramid strides").
_base_ = ['./deformable-detr-refine-twostage_surgeryclip-vitb16_deformneck_16xb2-50e_coco.py']
model = dict(neck=dict(out_strides=[16, 32, 64, 128]))
