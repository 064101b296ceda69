"""Layer-wise LR decay: read the built optimizer's parameter groups."""
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import plugins.mmdet_custom  # noqa: F401  (registers the wing)
from plugins.mmdet_custom.engine.optimizers.layer_decay_optim_constructor \
    import layer_id_of

DECAY, LR, WD = 0.5, 1e-3, 0.05
TINY_BACKBONES = {
    'surgeryclip': dict(type='SurgeryCLIPBackbone',
                        model_name='ViT-Tiny-16-test', surgery_depth=2),
    'openclip': dict(type='OpenCLIPBackbone', model_name='ViT-Tiny-16-test'),
    'biomedclip': dict(type='BiomedCLIPBackbone',
                       model_name='BiomedCLIP-Tiny-test'),
    'conceptclip': dict(type='ConceptCLIPBackbone',
                        model_name='ConceptCLIP-Tiny-test'),
}
# The patch embedding and position embedding of each tower, by name.
EMBEDDINGS = {
    'surgeryclip': ('visual.conv1.weight', 'visual.positional_embedding'),
    'openclip': ('visual.conv1.weight', 'visual.positional_embedding'),
    'biomedclip': ('visual.trunk.patch_embed.proj.weight',
                   'visual.trunk.pos_embed'),
    'conceptclip': ('visual.trunk.patch_embed.proj.weight',
                    'visual.trunk.pos_embed'),
}


@pytest.fixture(autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


class Detector(nn.Module):
    """Backbone + neck + head, named as in mmdet detectors."""

    def __init__(self, backbone: dict):
        super().__init__()
        from mmdet.registry import MODELS
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(dict(
            type='DeformableCrossAttentionNeck',
            in_channels=[self.backbone.embed_dims], out_channels=32,
            out_strides=[8, 16, 32], num_heads=4))
        self.bbox_head = nn.Linear(32, 4)


def _build(model, decay=DECAY, **paramwise):
    from mmengine.optim import build_optim_wrapper
    cfg = dict(type='OptimWrapper',
               optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
               constructor='LayerDecayOptimWrapperConstructor',
               paramwise_cfg=dict(layer_decay_rate=decay, **paramwise))
    return build_optim_wrapper(model, cfg).optimizer


def _group_of(optimizer, param):
    found = [g for g in optimizer.param_groups
             if any(p is param for p in g['params'])]
    assert len(found) <= 1
    return found[0] if found else None


def _tower_param(backbone, name):
    return dict(backbone.named_parameters())[name]


@pytest.mark.parametrize('kind', list(TINY_BACKBONES))
def test_multipliers_of_blocks_embeddings_norms_and_neck(kind):
    model = Detector(TINY_BACKBONES[kind])
    optim = _build(model)
    blocks = model.backbone.blocks
    n = len(blocks)
    assert n >= 4  # tiny test towers: 4-6 blocks

    def lr_of(param):
        return _group_of(optim, param)['lr'] / LR

    def first_matrix(module):
        return next(p for p in module.parameters() if p.ndim == 2)

    # first, a middle and the last block: decay ** (n + 1 - (i + 1))
    for i in (0, n // 2, n - 1):
        assert lr_of(first_matrix(blocks[i])) == pytest.approx(
            DECAY**(n - i)), f'block {i}'
    patch, pos = (_tower_param(model.backbone, k) for k in EMBEDDINGS[kind])
    assert lr_of(patch) == pytest.approx(DECAY**(n + 1))  # layer 0
    assert lr_of(pos) == pytest.approx(DECAY**(n + 1))
    assert _group_of(optim, pos)['weight_decay'] == 0.0
    assert _group_of(optim, patch)['weight_decay'] == WD
    # norms and biases: no weight decay; matrices of the same block: WD
    norm = next(m for m in blocks[1].modules() if isinstance(m, nn.LayerNorm))
    for p in (norm.weight, norm.bias):
        assert _group_of(optim, p)['weight_decay'] == 0.0
        assert lr_of(p) == pytest.approx(DECAY**(n - 1))
    assert _group_of(optim, first_matrix(blocks[1]))['weight_decay'] == WD
    # neck and head: full rate
    for p in model.neck.parameters():
        assert lr_of(p) == 1.0
    conv = model.neck.fine_convs[0][0].weight
    assert _group_of(optim, conv)['weight_decay'] == WD
    assert _group_of(optim, model.bbox_head.bias)['weight_decay'] == 0.0
    assert lr_of(model.bbox_head.weight) == 1.0
    # every trainable parameter is in exactly one group
    in_groups = [p for g in optim.param_groups for p in g['params']]
    assert len(in_groups) == len({id(p) for p in in_groups})
    assert {id(p) for p in in_groups} == {
        id(p) for p in model.parameters() if p.requires_grad}


def test_train_last_n_blocks_and_frozen_params_stay_out():
    model = Detector(dict(TINY_BACKBONES['openclip'], train_last_n_blocks=2))
    optim = _build(model)
    blocks = model.backbone.blocks
    for p in list(blocks[0].parameters()) + list(blocks[1].parameters()):
        assert _group_of(optim, p) is None
    assert _group_of(optim, model.backbone.visual.conv1.weight) is None
    last = next(p for p in blocks[3].parameters() if p.ndim == 2)
    assert _group_of(optim, last)['lr'] == pytest.approx(LR * DECAY)
    # the decay still counts all 4 blocks: block 2 is layer 3 of 4
    third = next(p for p in blocks[2].parameters() if p.ndim == 2)
    assert _group_of(optim, third)['layer_id'] == 3
    ln_post = model.backbone.visual.ln_post.weight
    assert _group_of(optim, ln_post)['lr'] == pytest.approx(LR)

    frozen = Detector(dict(TINY_BACKBONES['openclip'], frozen=True))
    optim = _build(frozen)
    assert all(not n.startswith('backbone.')
               for n, p in frozen.named_parameters()
               if _group_of(optim, p) is not None)
    assert optim.param_groups  # neck and head still train


def test_layer_ids_from_names_without_a_blocks_attribute():
    assert layer_id_of('backbone.visual.transformer.resblocks.3.attn.in_proj_'
                       'weight', 12) == 4
    assert layer_id_of('backbone.visual.trunk.blocks.11.mlp.fc1.weight',
                       12) == 12
    assert layer_id_of('backbone.visual.trunk.cls_token', 12) == 0
    assert layer_id_of('backbone.visual.ln_pre.weight', 12) == 0
    assert layer_id_of('backbone.visual.ln_post.weight', 12) == 13
    assert layer_id_of('neck.alignment.layers.0.norm1.weight', 12) == 13


def test_errors_name_the_missing_key():
    model = Detector(TINY_BACKBONES['openclip'])
    from mmengine.optim import build_optim_wrapper
    with pytest.raises(ValueError, match='layer_decay_rate'):
        build_optim_wrapper(model, dict(
            type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR),
            constructor='LayerDecayOptimWrapperConstructor'))
    with pytest.raises(ValueError, match=r'in \(0, 1\], got 1.5'):
        _build(model, decay=1.5)


def test_shipped_fine_tuning_config(repo_root):
    """The ViT-B/16 LLRD config: 12 blocks, decay 0.7, neck at full rate."""
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(str(
        repo_root / 'configs/dino/'
        'dino-4scale_surgeryclip-vitb16_deformneck-ft-llrd_8xb2-12e_coco.py'))
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    base = cfg.optim_wrapper.optimizer.lr
    blocks = model.backbone.blocks
    for i in (0, 5, 11):
        w = blocks[i].attn.in_proj_weight
        assert _group_of(optim, w)['lr'] == pytest.approx(
            base * 0.7**(12 - i))
    conv1 = model.backbone.visual.conv1.weight
    assert _group_of(optim, conv1)['lr'] == pytest.approx(base * 0.7**13)
    cls = model.backbone.visual.class_embedding
    assert _group_of(optim, cls)['weight_decay'] == 0.0
    neck_w = model.neck.fine_convs[0][0].weight
    assert _group_of(optim, neck_w)['lr'] == pytest.approx(base)
    assert _group_of(optim, neck_w)['weight_decay'] == 0.1
