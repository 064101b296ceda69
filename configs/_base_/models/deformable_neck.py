# DeformableCrossAttentionNeck on a ViT-B map (768 channels, stride 16): four
# levels at strides 8, 16, 32, 64 (as detrex's DINO + ViTDet), 8 by a
# transposed conv from the stride-16 map, 32 and 64 by strided convs, each
# level then refined by deformable cross-attention over all four.  The
# `*_deformneck-s16-128` configs keep the earlier 16, 32, 64, 128
# (docs/detectors.md, "Pyramid strides").  A config takes it with
#   model = dict(neck=dict(_base_.deformable_neck, _delete_=True), ...)
deformable_neck = dict(
    type='DeformableCrossAttentionNeck',
    in_channels=[768],
    out_channels=256,
    in_strides=[16],
    out_strides=[8, 16, 32, 64],
    num_heads=8,
    num_points=4)
# The same pyramid on ConceptCLIP's SigLIP so400m/14 map (1152 channels,
# stride 14): strides 7, 14, 28, 56.
deformable_neck_so400m14 = dict(
    deformable_neck, in_channels=[1152], in_strides=[14],
    out_strides=[7, 14, 28, 56])
