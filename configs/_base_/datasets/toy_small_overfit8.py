# The small-object toy data (`python tools/make_toy_dataset.py --variant
# small --out data/toy_small`): 256-512 px images, 4-10 shapes each with
# 6-24 px boxes (all COCO "small").  Images keep their size (no resize, so
# objects stay small).  Like toy_detection_overfit8.py, it trains on the
# first 8 training images and evaluates on the same 8: on a CPU budget this
# measures whether a detector can localise small objects at all, not
# generalisation.
_base_ = ['./toy_detection_overfit8.py']
data_root = 'data/toy_small/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale_factor=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_train8.json')
test_evaluator = val_evaluator
