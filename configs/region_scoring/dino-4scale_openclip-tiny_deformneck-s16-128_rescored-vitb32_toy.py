# Re-score a detector's output zero-shot: the tiny OpenCLIP DINO demo wrapped
# in RegionRescoringDetector. Each predicted box is cropped from the original
# image and scored against COCO-80 positives and background negatives by an
# OpenCLIP ViT-B-32; its score is multiplied by the semantic multiplier
# (0.1 / 0.5 / 1.0 / 2.0, see docs/region_scoring.md).
# Point `weights` at a local open_clip_model.safetensors (laion2b_s34b_b79k);
# with `weights=None` the scorer has random weights (smoke tests only).
_base_ = ['../_demo_/dino-4scale_openclip-tiny_deformneck-s16-128_toy.py']

model = dict(
    _delete_=True,
    type='RegionRescoringDetector',
    detector=_base_.model,
    scorer=dict(
        model='ViT-B-32',
        weights=None,  # e.g. '/models/ViT-B-32/open_clip_model.safetensors'
        pretrained_tag='laion2b_s34b_b79k',
        positive_prompts='coco80',  # or a list, or a text file
        negative_prompts='background',
        strategy='gray',  # 'gray' | 'raw' | 'soft'
        soft_alpha=0.4,
        batch_size=32,
        multiplier=dict()),  # e.g. dict(neg_thr=0.6)
    mode='multiply',  # or 'filter' (keeps multiplier >= min_multiplier)
    min_multiplier=1.0,
    score_thr=0.05)
