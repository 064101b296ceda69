"""OpenAI-layout CLIP weights through the shipped SurgeryCLIP DINO configs.

A user sets only ``model.backbone.pretrained`` to OpenAI's ``ViT-B-16.pt``
(the configs name ``model_name='ViT-B-16-quickgelu'``: OpenAI's weights run
QuickGELU, and the activation is in the config) and must get CLIP Surgery's
features.  The archive here is a random ViT-B/16 CLIP written in OpenAI's
layout (checked against ``tests/data/openai_clip_vit_b16_layout.json``); the
reference is an independent CLIP Surgery computation on the archive's raw
tensors, written from the facts in ``tests/data/clip_surgery_facts.json``.
The detector trained from it stands alone: with the archive deleted it
builds from the shipped config and its checkpoint reproduces the backbone.
"""
import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger

import plugins.mmdet_custom  # noqa: F401  (registers the backbones)
from plugins.models import create_model
from plugins.models.weights import ActivationMismatchError
from plugins.models.testing import write_openai_archive
from plugins.utils import safe_load

ROOT = next(p for p in Path(__file__).resolve().parents
            if (p / 'configs').is_dir())
DATA = ROOT / 'tests' / 'data'
LAYOUT = json.loads((DATA / 'openai_clip_vit_b16_layout.json').read_text())
SURGERY = json.loads((DATA / 'clip_surgery_facts.json').read_text())
CONFIGS = [
    'configs/dino/dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py',
    'configs/dino/dino-1scale_surgeryclip-vitb16_8xb2-12e_coco.py',
]
SURGERY_DEPTH = 6  # "the last 6 of the 12 blocks"


@pytest.fixture(scope='module')
def openai_vitb16(tmp_path_factory):
    """``(path, raw state)`` of a random OpenAI-layout ``ViT-B-16.pt``."""
    torch.manual_seed(0)
    clip = create_model('ViT-B-16-quickgelu').eval()
    path = write_openai_archive(
        clip, tmp_path_factory.mktemp('openai') / 'ViT-B-16.pt')
    del clip
    return path, safe_load(path)


def test_archive_has_openai_layout(openai_vitb16):
    _, state = openai_vitb16
    for key, value in LAYOUT['metadata'].items():
        assert state[key].dim() == 0 and int(state[key]) == value
    weights = {k: v for k, v in state.items() if k not in LAYOUT['metadata']}
    # the TorchScript archive also holds the text tower's causal mask
    # (a tensor attribute, not a state-dict entry of OpenAI's model)
    weights.pop('attn_mask', None)
    assert {k: list(v.shape) for k, v in weights.items()} == LAYOUT['keys']
    assert state['visual.conv1.weight'].dtype == torch.float16


# ---------------------------------------------------------------------------
# Independent CLIP Surgery (from tests/data/clip_surgery_facts.json)
# ---------------------------------------------------------------------------
def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _ln(x, st, name):
    return F.layer_norm(x, (x.shape[-1], ), st[name + '.weight'],
                        st[name + '.bias'], 1e-5)


def _attention(x, st, name, heads, value_value):
    b, n, c = x.shape
    qkv = x @ st[name + '.in_proj_weight'].t() + st[name + '.in_proj_bias']
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    if value_value:
        q = k = v
    weights = ((q @ k.transpose(-2, -1)) * (c // heads)**-0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    return out @ st[name + '.out_proj.weight'].t() + st[name +
                                                        '.out_proj.bias']


def clip_surgery_tokens(st, images, act=_quick_gelu, depth=SURGERY_DEPTH):
    """CLIP Surgery's tokens after ``ln_post`` (before ``proj``):
    ``(B, 1 + g * g, width)``, square inputs."""
    w = st['visual.conv1.weight']
    width, patch = w.shape[0], w.shape[-1]
    heads = width // 64
    x = F.conv2d(images, w, stride=patch)
    side = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = st['visual.class_embedding'].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = st['visual.positional_embedding']
    old = int(round((pos.shape[0] - 1)**0.5))
    if old != side:
        grid = pos[1:].reshape(1, old, old, width).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, (side, side), mode='bilinear', align_corners=False)
        pos = torch.cat([pos[:1], grid.reshape(width, -1).t()])
    x = _ln(x + pos, st, 'visual.ln_pre')
    layers = len({
        k.split('.')[3]
        for k in st if k.startswith('visual.transformer.resblocks.')
    })
    x_sur = None
    for i in range(layers):
        p = f'visual.transformer.resblocks.{i}'
        h = _ln(x, st, p + '.ln_1')
        if i >= layers - depth:
            vv = _attention(h, st, p + '.attn', heads, value_value=True)
            x_sur = (x if x_sur is None else x_sur) + vv  # no FFN
        x = x + _attention(h, st, p + '.attn', heads, value_value=False)
        m = _ln(x, st, p + '.ln_2')
        m = act(m @ st[p + '.mlp.c_fc.weight'].t() + st[p + '.mlp.c_fc.bias'])
        x = x + m @ st[p + '.mlp.c_proj.weight'].t() + st[p +
                                                          '.mlp.c_proj.bias']
    tokens = torch.cat([x[:, :1], x_sur[:, 1:]], dim=1)
    return _ln(tokens, st, 'visual.ln_post')


def test_reference_facts_are_the_ones_written_down():
    assert 'last 6 of the 12' in SURGERY['surgery_blocks']
    assert SURGERY['activation'].startswith('quick_gelu')
    assert SURGERY['pos_embed_resize']['mode'] == 'bilinear'
    assert SURGERY['pos_embed_resize']['antialias'] is False


# ---------------------------------------------------------------------------
# The shipped configs, only `pretrained` set
# ---------------------------------------------------------------------------
def _backbone_cfg(config: str) -> dict:
    return copy.deepcopy(Config.fromfile(str(ROOT / config)).model.backbone)


def test_configs_share_the_openai_ready_backbone():
    cfgs = [_backbone_cfg(c) for c in CONFIGS]
    assert cfgs[0] == cfgs[1]
    assert cfgs[0]['type'] == 'SurgeryCLIPBackbone'
    # the activation of OpenAI's weights is in the config (open_clip's name)
    assert cfgs[0]['model_name'] == 'ViT-B-16-quickgelu'
    assert cfgs[0]['surgery_depth'] == SURGERY_DEPTH
    assert 'pos_embed_interp' not in cfgs[0]  # the backbone's default


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope='module')
def config_backbone(openai_vitb16):
    from mmdet.registry import MODELS
    from open_clip.transformer import QuickGELU
    path, _ = openai_vitb16
    cfg = _backbone_cfg(CONFIGS[0])
    cfg['pretrained'] = str(path)  # the one line the config asks for
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    try:
        backbone = MODELS.build(cfg).eval()
        backbone.init_weights()  # as the runner does before training
    finally:
        logger.removeHandler(handler)
    n_quick = sum(isinstance(m, QuickGELU) for m in backbone.modules())
    n_gelu = sum(type(m) is torch.nn.GELU for m in backbone.modules())
    return backbone, handler.records, n_quick, n_gelu


def test_config_backbone_runs_quick_gelu_and_says_the_file_once(
        config_backbone, openai_vitb16):
    _, records, n_quick, n_gelu = config_backbone
    assert (n_quick, n_gelu) == (12, 0)
    said = [r for r in records if str(openai_vitb16[0]) in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.INFO
    # every image-tower tensor of the archive (152 for ViT-B/16)
    assert 'loaded 152 tensors' in said[0].getMessage()
    assert not [r for r in records if r.levelno >= logging.WARNING]


def test_gelu_config_refuses_the_openai_file_naming_the_fix(openai_vitb16):
    from mmdet.registry import MODELS
    path, _ = openai_vitb16
    cfg = dict(_backbone_cfg(CONFIGS[0]), model_name='ViT-B-16',
               pretrained=str(path))
    backbone = MODELS.build(cfg)
    with pytest.raises(ActivationMismatchError) as info:
        backbone.init_weights()
    msg = str(info.value)
    assert str(path) in msg and 'OpenAI CLIP layout' in msg
    assert "model.backbone.model_name='ViT-B-16-quickgelu'" in msg


@pytest.mark.parametrize('size', [224, 320])
def test_config_backbone_matches_clip_surgery(config_backbone, openai_vitb16,
                                              size):
    backbone = config_backbone[0]
    st = {k: v.float() for k, v in openai_vitb16[1].items()}
    torch.manual_seed(size)
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        (ours, ) = backbone(images)
        ref = clip_surgery_tokens(st, images)
        ref_gelu = clip_surgery_tokens(st, images, act=F.gelu)
    side = size // 16
    ref = ref[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    ref_gelu = ref_gelu[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    assert ours.shape == (1, 768, side, side)
    err = (ours - ref).abs().max().item()
    assert err < 1e-4, f'{size}x{size}: max |ours - CLIP Surgery| = {err:.2e}'
    # the activation is what this test is about: GELU is measurably off
    assert (ours - ref_gelu).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------
# The trained detector stands alone
# ---------------------------------------------------------------------------
def test_shipped_detector_trained_from_the_archive_stands_alone(
        openai_vitb16, tmp_path):
    """configs/dino/dino-4scale_surgeryclip-vitb16_deformneck_8xb2-12e_coco.py
    trained from an OpenAI-layout ``ViT-B-16.pt``: with the file deleted the
    detector builds from the config, and the checkpoint alone reproduces the
    backbone, with ``pretrained`` as trained and with ``pretrained=None``."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner.checkpoint import (get_state_dict, load_checkpoint,
                                            save_checkpoint, weights_to_cpu)
    register_all_modules(init_default_scope=True)
    archive, _ = openai_vitb16
    path = tmp_path / 'ViT-B-16.pt'
    shutil.copy(archive, path)
    cfg = Config.fromfile(str(ROOT / CONFIGS[0]))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.pretrained = str(path)
    torch.manual_seed(0)
    detector = MODELS.build(copy.deepcopy(model_cfg))
    detector.init_weights()  # the runner, before training
    with torch.no_grad():  # "training": the frozen backbone's last block
        for p in detector.backbone.blocks[-2].parameters():
            p.add_(0.01 * torch.randn_like(p))
    images = torch.randn(1, 3, 224, 224,
                         generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (trained, ) = detector.eval().backbone(images)
    ckpt = tmp_path / 'epoch_12.pth'
    save_checkpoint(dict(meta=dict(epoch=12),
                         state_dict=weights_to_cpu(get_state_dict(detector))),
                    str(ckpt))
    del detector
    path.unlink()  # a machine without the training-time weights file
    for pretrained in (str(path), None):
        model_cfg.backbone.pretrained = pretrained
        fresh = MODELS.build(copy.deepcopy(model_cfg))
        load_checkpoint(fresh, str(ckpt), map_location='cpu', strict=True)
        with torch.no_grad():
            (got, ) = fresh.eval().backbone(images)
        err = (got - trained).abs().max().item()
        assert err <= 1e-6, f'pretrained={pretrained}: {err}'
        del fresh
