# BiomedCLIP frozen; trained: 4 VPT-Deep prompts per block (12 x 4 x 768)
# and 4 CoOp context vectors (4 x 768) = 39,936 parameters.  Segmentation by
# patch-text similarity (14 x 14 maps at 224), CE + Dice on the maps
# upsampled to the mask size.
#
# Point `data_root`, `classes` and `pretrained` at your data and the
# downloaded BiomedCLIP folder (open_clip_pytorch_model.bin + vocab.txt):
#   python tools/train.py configs/vpt_tpt/vpt4-tpt4_biomedclip-vitb16_seg.py \
#       --cfg-options model.segmentor.pretrained=/path/to/BiomedCLIP
# Masks: single-channel PNGs of class indices, same file names as images.
_base_ = ['../_base_/default_runtime.py']

# Mask value i is class classes[i]; each class name becomes a CoOp prompt
# ([CLS] ctx_1..ctx_4 <name> [SEP]).
classes = ('background', 'circle', 'square', 'triangle')
palette = [(0, 0, 0), (220, 20, 60), (0, 130, 200), (255, 180, 0)]
data_root = 'data/toy/'

model = dict(
    type='VPTTPTSemanticSegmentor',
    class_names=classes,
    segmentor=dict(
        model_name='BiomedCLIP-PubMedBERT_256-vit_base_patch16_224',
        pretrained=None,  # random weights unless a local folder/file is set
        num_visual_prompts=4,
        num_text_prompts=4,
        deep_visual_prompts=True),
    temperature='clip',  # exp(logit_scale) of the CLIP model
    loss_weights=dict(ce=1.0, dice=1.0, consistency=0.0),
    ignore_index=255,
    data_preprocessor=dict(type='ImageListDataPreprocessor', bgr_to_rgb=True))

# The model resizes every image to 224 x 224 itself and predicts at the
# image size, so the pipelines only load, flip and pack.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadSemanticMask'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSemSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadSemanticMask'),
    dict(type='PackSemSegInputs'),
]
dataset_type = 'SemanticMaskFolderDataset'
metainfo = dict(classes=classes, palette=palette)
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/train',
                         seg_map_path='semantic/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=dict(img_path='images/val', seg_map_path='semantic/val'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUDiceMetric', ignore_index=255)
test_evaluator = val_evaluator

max_iters = 2000
val_interval = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# Prompts only: a large learning rate, no weight decay (VPT/CoOp practice).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters,
         T_max=max_iters - 100, eta_min=1e-5),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval=val_interval, max_keep_ckpts=2,
                    save_best='semseg/mIoU', rule='greater'),
    # `tools/test.py --show-dir DIR` turns this on: mask overlays and
    # per-class similarity heatmaps as PNGs.
    visualization=dict(type='SemSegVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
