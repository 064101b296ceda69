# As the main demo, with the plain OpenCLIP image encoder (no surgery path).
_base_ = ['./dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py']
model = dict(backbone=dict(_base_.openclip_tiny, _delete_=True))
