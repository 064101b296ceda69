"""The configs follow one naming scheme and state shared numbers once
(docs/configs.md)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
LEAVES = sorted(p for p in CONFIGS.rglob('*.py') if '_base_' not in p.parts)

# {model}-{N}scale_{backbone}_{neck}[-{variant}]_{schedule}_{data}, mmdet's
# scheme; the tiny demos carry no schedule part (they share toy_iters.py).
# mmdet's own Deformable-DETR names carry no level count for 4 levels.
MODEL = (r'((dino|grounding_dino)-[14]scale'
         r'|deformable-detr-refine-twostage(-1scale)?|vpt4-tpt4)')
BACKBONE = (r'(surgeryclip|openclip|biomedclip)-(vitb16|vitb32|tiny)'
            r'|conceptclip-so400m14|r18-tiny')
NECK = r'(_deformneck(-s\d+-\d+|-ft-llrd)?)?'
EXTRA = r'(_rescored-vitb32)?'
SCHEDULE = r'(_\d+xb\d+(-\d+e|_1x))?'
DATA = r'_(coco|toy|toy-small|toy-semantic|seg)'
NAME = re.compile(
    f'^{MODEL}_({BACKBONE}){NECK}{EXTRA}{SCHEDULE}{DATA}\\.py$')


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_leaf_configs_are_found():
    assert len(LEAVES) >= 35


@pytest.mark.parametrize('path', LEAVES, ids=_rel)
def test_name_follows_the_scheme(path):
    assert NAME.match(path.name), (
        f'{_rel(path)}: name does not follow '
        '{model}-{N}scale_{backbone}_{neck}_{schedule}_{data}.py '
        '(docs/configs.md)')


def test_the_scheme_rejects_the_old_demo_names():
    # The pattern above must be able to fail.
    for old in ('dino_surgeryclip-tiny_deformneck_toy.py',
                'deformable-detr_surgeryclip-tiny_deformneck_toy.py',
                'vpt_tpt_tiny_toy.py', 'grounding_dino_r18-tiny_toy.py'):
        assert not NAME.match(old), old


def _numbers(path: Path, literal: str) -> bool:
    return literal in path.read_text()


@pytest.mark.parametrize('literal,home', [
    # CLIP's normalisation in 0-255 units.
    ('122.7709', 'configs/_base_/models/clip_backbones.py'),
    # The tiny detectors' FFN width: detr_tiny.py says it once.
    ('feedforward_channels=512', 'configs/_base_/models/detr_tiny.py'),
    # The deformable neck's ViT-B block.
    ("type='DeformableCrossAttentionNeck'",
     'configs/_base_/models/deformable_neck.py'),
    # The 1-scale neck.
    ("type='ChannelMapper',\n    in_channels=[768]",
     'configs/_base_/models/channel_mapper_1scale.py'),
])
def test_shared_numbers_are_written_once(literal, home):
    holders = [_rel(p) for p in sorted(CONFIGS.rglob('*.py'))
               if _numbers(p, literal)]
    assert holders == [home], (
        f'{literal!r} should live only in {home}; found in {holders}')
