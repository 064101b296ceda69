"""Key-mapping helpers and the strict key check."""
import pytest
import torch

from plugins.utils import (StateDictMismatchError, add_prefix,
                           check_state_dict, key_mismatch, rename_keys,
                           select_prefix, strip_prefix, unwrap_state_dict)

T = torch.zeros(1)


def test_prefix_helpers():
    state = {'module.a': T, 'module.b': T}
    assert set(strip_prefix(state, 'module.')) == {'a', 'b'}
    assert set(add_prefix({'a': T}, 'visual.')) == {'visual.a'}
    mixed = {'visual.a': T, 'text.b': T}
    assert set(select_prefix(mixed, 'visual.')) == {'a'}
    assert set(select_prefix(mixed, 'visual.', strip=False)) == {'visual.a'}
    assert strip_prefix(mixed, 'visual.', only_if_all=True) == mixed


def test_rename_keys_applies_rules_in_order():
    out = rename_keys({'blocks.0.attn.qkv.weight': T},
                      [(r'^blocks\.', 'trunk.blocks.'),
                       (r'\.qkv\.', '.in_proj.')])
    assert list(out) == ['trunk.blocks.0.attn.in_proj.weight']


def test_unwrap_drops_non_tensors_and_ddp_prefix():
    out = unwrap_state_dict({'epoch': 1, 'model': {'module.w': T, 'n': 3}})
    assert list(out) == ['w']
    # a prefix on only some keys is a real name, not DDP's
    assert set(unwrap_state_dict({'module.w': T, 'x': T})) == {'module.w', 'x'}


def test_unwrap_follows_state_dict_beside_a_stray_tensor():
    # this project's runner checkpoints: RNGStateHook stores a tensor next
    # to `state_dict`; the weights are still the ones under `state_dict`
    ckpt = {'meta': {'iter': 2}, 'torch_rng_state': T,
            'state_dict': {'backbone.w': T, 'head.b': T}}
    assert sorted(unwrap_state_dict(ckpt)) == ['backbone.w', 'head.b']


def test_check_state_dict_lists_keys_and_shapes():
    expected = {'a': torch.zeros(2), 'b': torch.zeros(3), 'c': T}
    state = {'a': torch.zeros(2), 'b': torch.zeros(4), 'zz': T}
    assert key_mismatch(expected,
                        state) == (['c'], ['zz'], [('b', (4, ), (3, ))])
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(expected, state, source='f.bin', target='Net')
    msg = str(info.value)
    assert 'f.bin' in msg and 'Net' in msg
    assert "missing keys: [c]" in msg and 'unexpected keys: [zz]' in msg
    assert 'b: checkpoint (4,) vs model (3,)' in msg
    assert 'convert_clip_checkpoint.py' in msg
    assert info.value.missing == ['c'] and info.value.unexpected == ['zz']
    check_state_dict(expected, dict(expected))  # exact match passes


def test_long_key_lists_are_truncated():
    expected = {f'k{i}': T for i in range(50)}
    with pytest.raises(StateDictMismatchError, match=r'\+30 more'):
        check_state_dict(expected, {})
