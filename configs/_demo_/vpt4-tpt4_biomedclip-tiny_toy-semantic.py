# CPU demo of the BiomedCLIP prompt-learning segmentor on the toy semantic
# masks (data/toy/semantic): the same model classes with BiomedCLIP's tiny
# test architecture (timm test_vit trunk, 2-layer BERT), a short schedule and
# validation every 25 iterations, so mIoU can be watched rising.
#   python tools/make_toy_dataset.py
#   python tools/train.py configs/_demo_/vpt4-tpt4_biomedclip-tiny_toy-semantic.py
# No pretrained weights exist offline: the frozen CLIP is random, re-drawn
# with `random_init='fan_in'` so its features depend on the prompts (at
# open_clip's own init every class name gives the same text feature).
_base_ = ['../vpt_tpt/vpt4-tpt4_biomedclip-vitb16_seg.py']

model = dict(
    segmentor=dict(model_name='BiomedCLIP-Tiny-test', random_init='fan_in'))

train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader

max_iters = 200
val_interval = 25
train_cfg = dict(max_iters=max_iters, val_interval=val_interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=10, end=max_iters,
         T_max=max_iters - 10, eta_min=1e-4),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, save_best=None))
