"""A trained checkpoint stands alone: every CLIP backbone family.

Each backbone is built from a config dict, its pretrained file (a tiny
random model written in the family's real layout) is loaded by
``init_weights()`` as the runner does before training, the weights move
("training"), and the detector-style checkpoint is written the way
mmengine's runner writes it.  Then the pretrained file is deleted: the
backbone must still build from the config (``pretrained`` as it was, and
``None``), and the checkpoint alone must give the trained output exactly.
Also: the activation record, OpenAI layouts in GELU backbones (and the
reverse), and checkpoints written before the record existed.
"""
import copy
import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import (get_state_dict, load_checkpoint,
                                        save_checkpoint, weights_to_cpu)

from plugins.mmdet_custom.models.backbones.base import (ACTIVATION_KEY,
                                                        decode_activation)
from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            CONCEPT_CLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME, create_model)
from plugins.models.testing import save_clip_checkpoint, write_openai_archive
from plugins.models.weights import ActivationMismatchError
from tests.helpers import randn_images

TINY_OPEN_CLIP = OPEN_CLIP_TINY_MODEL_NAME  # open_clip ViT, width 64
TINY_BIOMEDCLIP = BIOMEDCLIP_TINY_MODEL_NAME
TINY_CONCEPT_CLIP = CONCEPT_CLIP_TINY_MODEL_NAME

_spec = importlib.util.spec_from_file_location(
    'conceptclip_folder',
    Path(__file__).resolve().parents[3] / 'data' / 'conceptclip_folder.py')
folders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(folders)


class Detector(nn.Module):
    """Holds the backbone under ``backbone.``, as a detector does."""

    def __init__(self, backbone_cfg: dict):
        super().__init__()
        self.backbone = MODELS.build(copy.deepcopy(backbone_cfg))


_OPENAI_ARCHIVE = []


def _openai_file(root: Path) -> Path:
    """A random ``ViT-Tiny-16-test`` CLIP in OpenAI's TorchScript layout
    (trained with QuickGELU, as OpenAI's are); traced once, copied."""
    if not _OPENAI_ARCHIVE:
        torch.manual_seed(1)
        clip = create_model(TINY_OPEN_CLIP, quick_gelu=True).eval()
        source = root.parent / 'openai_source'
        source.mkdir()
        _OPENAI_ARCHIVE.append(
            write_openai_archive(clip, source / 'ViT-Tiny-16.pt'))
    root.mkdir(parents=True)
    return Path(shutil.copy(_OPENAI_ARCHIVE[0], root / 'ViT-Tiny-16.pt'))


def _biomedclip_folder(root: Path) -> Path:
    """BiomedCLIP's download: ``open_clip_pytorch_model.bin`` of the whole
    ``CustomTextCLIP`` (image and BERT text tower)."""
    torch.manual_seed(2)
    root.mkdir(parents=True)
    save_clip_checkpoint(create_model(TINY_BIOMEDCLIP), root, 'bin')
    return root


def _conceptclip_folder(root: Path) -> Path:
    """ConceptCLIP's HF folder in the released layout (safetensors with the
    text tower and concept heads, ``config.json``)."""
    layout = folders.load_layout()
    return folders.write_folder(root, layout, folders.random_state(layout, 3))


#: family -> (backbone config as a shipped config states it, weights writer,
#: input size)
FAMILIES = {
    'surgeryclip': (dict(type='SurgeryCLIPBackbone',
                         model_name=TINY_OPEN_CLIP,
                         quick_gelu=True,
                         surgery_depth=2,
                         frozen=False), _openai_file, 64),
    'openclip': (dict(type='OpenCLIPBackbone',
                      model_name=TINY_OPEN_CLIP,
                      quick_gelu=True,
                      out_indices=(1, -1),
                      train_last_n_blocks=2), _openai_file, 64),
    'biomedclip': (dict(type='BiomedCLIPBackbone',
                        model_name=TINY_BIOMEDCLIP,
                        frozen=False), _biomedclip_folder, 64),
    'conceptclip': (dict(type='ConceptCLIPBackbone',
                         model_name=TINY_CONCEPT_CLIP,
                         with_proj=True,
                         frozen=False), _conceptclip_folder, 56),
}


def _outputs(detector: Detector, x: torch.Tensor):
    with torch.no_grad():
        return detector.eval().backbone(x)


def _save_like_the_runner(detector: Detector, path: Path) -> Path:
    """What ``Runner.save_checkpoint`` writes: meta + ``state_dict`` from
    mmengine's ``get_state_dict`` (buffers included)."""
    save_checkpoint(
        dict(meta=dict(epoch=1, iter=8),
             state_dict=weights_to_cpu(get_state_dict(detector))),
        str(path))
    return path


def _train(detector: Detector, x: torch.Tensor) -> None:
    """Move every trainable weight (a few optimizer steps' worth), so the
    checkpoint differs from the pretrained file."""
    detector.train()
    opt = torch.optim.SGD(
        [p for p in detector.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(o.square().mean() for o in detector.backbone(x))
        loss.backward()
        opt.step()


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_trained_checkpoint_stands_alone(family, tmp_path):
    cfg, write, size = FAMILIES[family]
    weights = write(tmp_path / 'pretrained')
    cfg = dict(cfg, pretrained=str(weights))
    x = randn_images(size, size, seed=size)

    built = Detector(cfg)
    before = _outputs(built, x)
    built.backbone.init_weights()  # the runner, before training
    loaded = _outputs(built, x)
    assert (loaded[-1] - before[-1]).abs().max() > 1e-3  # it did load
    _train(built, x)
    trained = _outputs(built, x)
    assert (trained[-1] - loaded[-1]).abs().max() > 1e-4  # it did train
    ckpt = _save_like_the_runner(built, tmp_path / 'iter_8.pth')

    # The pretrained file is gone (a colleague's machine, a server).
    if weights.is_dir():
        shutil.rmtree(weights)
    else:
        weights.unlink()
    assert not weights.exists()

    for pretrained in (str(weights), None):
        # tools/test.py: build from the config, load the checkpoint, test
        # (no init_weights, so the missing file is never read)
        fresh = Detector(dict(cfg, pretrained=pretrained))
        load_checkpoint(fresh, str(ckpt), map_location='cpu', strict=True)
        got = _outputs(fresh, x)
        assert len(got) == len(trained)
        for a, b in zip(got, trained):
            err = (a - b).abs().max().item()
            assert err <= 1e-6, f'{family}, pretrained={pretrained}: {err}'

    # init_weights (training) does need the file, and says which
    with pytest.raises(FileNotFoundError, match=str(weights.name)):
        Detector(cfg).backbone.init_weights()


def test_the_checkpoint_records_the_activation(tmp_path):
    cfg = dict(FAMILIES['surgeryclip'][0])
    state = Detector(cfg).state_dict()
    assert decode_activation(state[f'backbone.{ACTIVATION_KEY}']) == \
        'quick_gelu'
    gelu = Detector(dict(cfg, quick_gelu=None)).state_dict()
    assert decode_activation(gelu[f'backbone.{ACTIVATION_KEY}']) == 'gelu'
    concept = Detector(FAMILIES['conceptclip'][0]).state_dict()
    assert decode_activation(concept[f'backbone.{ACTIVATION_KEY}']) == \
        'gelu'  # the tiny SigLIP-layout trunk's (so400m: gelu_tanh)
    # .half() (mixed precision) leaves the record as it is
    half = Detector(cfg).half().state_dict()[f'backbone.{ACTIVATION_KEY}']
    assert half.dtype == torch.uint8 and decode_activation(half) == \
        'quick_gelu'


def test_checkpoint_with_another_activation_fails_naming_the_key(tmp_path):
    cfg = dict(FAMILIES['openclip'][0])  # quick_gelu=True
    ckpt = _save_like_the_runner(Detector(cfg), tmp_path / 'quick.pth')
    gelu_cfg = dict(cfg, quick_gelu=None)  # 'ViT-Tiny-16-test': GELU
    with pytest.raises(ActivationMismatchError) as info:
        load_checkpoint(Detector(gelu_cfg), str(ckpt), map_location='cpu')
    msg = str(info.value)
    assert 'backbone.activation' in msg and 'ran quick_gelu' in msg
    assert 'configured with gelu' in msg
    assert 'model.backbone.quick_gelu=True' in msg
    # the reverse, through init_cfg with a prefix (a detector checkpoint as
    # the pretrained file of a QuickGELU backbone)
    gelu_ckpt = _save_like_the_runner(Detector(gelu_cfg), tmp_path / 'g.pth')
    quick = MODELS.build(dict(cfg, init_cfg=dict(
        type='Pretrained', checkpoint=str(gelu_ckpt), prefix='backbone.')))
    with pytest.raises(ActivationMismatchError) as info:
        quick.init_weights()
    msg = str(info.value)
    assert str(gelu_ckpt) in msg and 'ran gelu' in msg
    assert 'model.backbone.quick_gelu=False' in msg


@pytest.mark.parametrize('typ', ['SurgeryCLIPBackbone', 'OpenCLIPBackbone'])
def test_openai_file_in_a_gelu_backbone_fails_naming_file_layout_key(
        typ, tmp_path):
    path = _openai_file(tmp_path / 'openai')
    extra = dict(surgery_depth=2) if typ == 'SurgeryCLIPBackbone' else {}
    backbone = MODELS.build(dict(type=typ, model_name=TINY_OPEN_CLIP,
                                 pretrained=str(path), **extra))  # no read
    with pytest.raises(ActivationMismatchError) as info:
        backbone.init_weights()
    msg = str(info.value)
    assert str(path) in msg
    assert 'OpenAI CLIP layout' in msg and 'QuickGELU' in msg
    assert 'configured with gelu' in msg
    assert 'model.backbone.quick_gelu=True' in msg


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))


def _load_logged(detector, ckpt):
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    try:
        load_checkpoint(detector, str(ckpt), map_location='cpu', strict=True)
    finally:
        logger.removeHandler(handler)
    return handler.messages


@pytest.mark.parametrize('family', ['surgeryclip', 'biomedclip'])
def test_checkpoint_from_before_the_record_loads(family, tmp_path):
    """A detector checkpoint written before backbones recorded their
    activation (same keys, no ``backbone.activation``) loads strictly; where
    the activation is a choice (open_clip towers) a warning says which one
    runs and what to set for the other."""
    cfg, _, size = FAMILIES[family]
    x = randn_images(size, size, seed=size)
    old = Detector(cfg)
    state = weights_to_cpu(get_state_dict(old))
    del state[f'backbone.{ACTIVATION_KEY}']
    save_checkpoint(dict(meta={}, state_dict=state), str(tmp_path / 'o.pth'))
    fresh = Detector(cfg)
    said = _load_logged(fresh, tmp_path / 'o.pth')
    for a, b in zip(_outputs(fresh, x), _outputs(old, x)):
        assert (a - b).abs().max().item() == 0
    warned = [m for level, m in said if level >= logging.WARNING
              and 'backbone.activation' in m]
    if family == 'surgeryclip':
        assert len(warned) == 1, said
        assert 'runs quick_gelu as configured' in warned[0]
        assert 'model.backbone.quick_gelu=False' in warned[0]
    else:  # a timm tower: the model config fixes the activation
        assert warned == []


def test_freezing_is_reapplied_in_train():
    backbone = MODELS.build(FAMILIES['openclip'][0])  # last 2 blocks train
    for p in backbone.parameters():
        p.requires_grad_(True)
    backbone.train()
    assert not backbone.blocks[0].mlp.c_fc.weight.requires_grad
    assert backbone.blocks[-1].mlp.c_fc.weight.requires_grad
    assert not backbone.blocks[0].training and backbone.blocks[-1].training
