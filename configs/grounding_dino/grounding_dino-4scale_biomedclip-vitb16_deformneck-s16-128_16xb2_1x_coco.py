# GroundingDINO + biomedclip-vitb16 with the earlier pyramid: the ViT's own map and
# three coarser levels (strides 16, 32, 64, 128) instead of the default
# 8-64 (see docs/detectors.md, "Pyramid strides").
_base_ = ['./grounding_dino-4scale_biomedclip-vitb16_deformneck_16xb2_1x_coco.py']
model = dict(neck=dict(out_strides=[16, 32, 64, 128]))
