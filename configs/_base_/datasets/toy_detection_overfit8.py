# Overfit check on the toy data: train on the first 8 training images and
# evaluate on the same 8.  A detector that reaches a high mAP here has
# backbone, neck, deformable attention and head wired right; it says
# nothing about generalisation (use toy_detection.py's val split for that).
_base_ = ['./toy_detection.py']
train_dataloader = dict(
    batch_size=2,
    dataset=dict(ann_file='annotations/instances_train8.json'))
val_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_train8.json',
                 data_prefix=dict(img='images/train/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='data/toy/annotations/instances_train8.json')
test_evaluator = val_evaluator
