# As the main demo, with BiomedCLIP's image encoder (timm ViT trunk; the
# `BiomedCLIP-Tiny-test` architecture, random weights).
_base_ = ['./dino_surgeryclip-tiny_deformneck_toy.py']
model = dict(
    backbone=dict(_delete_=True, type='BiomedCLIPBackbone',
                  model_name='BiomedCLIP-Tiny-test', frozen=False),
    neck=dict(in_channels=[64]))
