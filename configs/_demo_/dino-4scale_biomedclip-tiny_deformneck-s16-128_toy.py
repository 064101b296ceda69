# As the main demo, with BiomedCLIP's image encoder (timm ViT trunk; the
# `BiomedCLIP-Tiny-test` architecture, random weights).
_base_ = ['./dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py']
model = dict(backbone=dict(_base_.biomedclip_tiny, _delete_=True))
