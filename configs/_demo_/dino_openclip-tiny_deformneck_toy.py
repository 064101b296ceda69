# As the main demo, with the plain OpenCLIP image encoder (no surgery path).
_base_ = ['./dino_surgeryclip-tiny_deformneck_toy.py']
model = dict(
    backbone=dict(_delete_=True, type='OpenCLIPBackbone',
                  model_name='ViT-Tiny-16-test', frozen=False))
