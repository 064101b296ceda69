# Fine-tuning the whole CLIP Surgery ViT-B/16 with layer-wise learning-rate
# decay (the ViTDet / BEiT / EVA recipe): block i of 12 learns at
# lr * 0.7 ** (13 - (i + 1)), the embeddings at lr * 0.7 ** 13, the final
# norm, neck and head at lr; no weight decay on norms, biases, the position
# embedding and the class token.  Replaces mmdet's flat 0.1x backbone rate.
# Frozen blocks (train_last_n_blocks) simply stay out of the optimizer.
_base_ = ['./dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py']
model = dict(backbone=dict(frozen=False, with_cp=True))
optim_wrapper = dict(
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=1e-4, weight_decay=0.1),  # ViTDet's AdamW settings
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.7))
