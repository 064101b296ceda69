"""--cfg-options of tools/train.py and tools/test.py keep spaces inside a
value (mmengine's DictAction deletes them) and read everything else as
DictAction does."""
import argparse

import pytest
from mmengine.config import DictAction

from plugins.mmdet_custom.engine.runner.cli import (add_common_args,
                                                    load_config,
                                                    parse_cfg_option)

SPACED = '/dir with spaces/file.safetensors'
DEMO = 'configs/_demo_/dino-4scale_openclip-tiny_deformneck-s16-128_toy.py'


def _parse(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_common_args(parser)
    return parser.parse_args(['x.py', *argv])


def test_dict_action_deletes_the_spaces():
    # The bug, at its source: what mmengine alone gives the runner.
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(
        ['--cfg-options', f'model.backbone.pretrained={SPACED}'])
    assert args.cfg_options['model.backbone.pretrained'] == \
        '/dirwithspaces/file.safetensors'


def test_quoted_path_with_spaces_reaches_the_config(repo_root):
    # The shell turned `pretrained="/dir with spaces/..."` into one argument.
    args = _parse('--cfg-options', f'model.backbone.pretrained={SPACED}',
                  'train_cfg.max_iters=3')
    assert args.cfg_options == {'model.backbone.pretrained': SPACED,
                                'train_cfg.max_iters': 3}
    args.config = str(repo_root / DEMO)
    cfg = load_config(args)
    assert cfg.model.backbone.pretrained == SPACED


@pytest.mark.parametrize('text,value', [
    # without whitespace: exactly DictAction's reading
    ('8', 8), ('0.5', 0.5), ('True', True), ('None', None), ('abc', 'abc'),
    ('1,2', [1, 2]), ('[1,2]', [1, 2]), ('(1,2)', (1, 2)),
    ('[(1,2),[a,b],c]', [(1, 2), ['a', 'b'], 'c']), ('"x"', 'x'),
    # with whitespace: spaces inside a value kept, around elements dropped
    (SPACED, SPACED), (f'"{SPACED}"', SPACED), (f"'{SPACED}'", SPACED),
    ('  padded  ', 'padded'), ('[1, 2]', [1, 2]), ('(128, 128)', (128, 128)),
    ('[(1, 2), [a, b], c]', [(1, 2), ['a', 'b'], 'c']),
    ('a, b', ['a', 'b']), ('(1, 2), (3, 4)', [(1, 2), (3, 4)]),
    (f'["{SPACED}", /b c.pth]', [SPACED, '/b c.pth']),
    ('["a, b", c]', ['a, b', 'c']), ('[ ]', []),
])
def test_values_parse_like_dict_action_but_keep_spaces(text, value):
    assert parse_cfg_option(text) == value
    if not any(char.isspace() for char in text):
        assert DictAction._parse_iterable(text) == value


@pytest.mark.parametrize('item,message', [
    ('model.backbone.pretrained', 'expected KEY=VALUE'),
    ('=3', 'expected KEY=VALUE'),
    ('x=[1, 2', 'unbalanced brackets or quotes'),
    ('x="a b', 'unbalanced brackets or quotes'),
    ('x=[1,2', 'Imbalanced brackets'),
])
def test_malformed_items_are_refused_by_name(capsys, item, message):
    with pytest.raises(SystemExit) as exit_info:
        _parse('--cfg-options', item)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and '--cfg-options' in err


def test_repeated_cfg_options_merge():
    args = _parse('--cfg-options', 'a=1', '--cfg-options', f'b={SPACED}')
    assert args.cfg_options == {'a': 1, 'b': SPACED}
