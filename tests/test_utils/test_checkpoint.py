"""safe_load: every format, clear errors, and no code execution."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from plugins.utils import (CheckpointError, UnsafeCheckpointError,
                           non_regular_kind, read_shard_index, safe_load,
                           safe_load_object, safe_load_sharded,
                           save_safetensors)

MARKER = 'plugins-test-pwned'


class _RunsCode:
    """Unpickling this would call os.system (writes a marker file)."""

    def __init__(self, marker_path):
        self.marker_path = str(marker_path)

    def __reduce__(self):
        return os.system, (f'touch {self.marker_path}', )


def _state():
    return {
        'a.weight': torch.arange(6.).reshape(2, 3),
        'a.bias': torch.ones(2, dtype=torch.float16)
    }


def _assert_same(loaded, expected):
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)


@pytest.mark.parametrize('fmt', ['safetensors', 'zip', 'legacy'])
def test_formats_round_trip(tmp_path, fmt):
    path = tmp_path / f'w.{fmt}'
    if fmt == 'safetensors':
        save_file(_state(), str(path))
    else:
        torch.save(_state(), path, _use_new_zipfile_serialization=fmt == 'zip')
    _assert_same(safe_load(path), _state())


def test_safetensors_without_extension_is_detected(tmp_path):
    path = tmp_path / 'weights.bin'
    save_file(_state(), str(path))
    _assert_same(safe_load(path), _state())


def test_save_safetensors_copies_shared_storage(tmp_path):
    base = torch.arange(4.)
    path = save_safetensors({
        'x': base,
        'y': base[:2]
    }, tmp_path / 's.safetensors')
    out = safe_load(path)
    assert torch.equal(out['y'], base[:2])
    assert not (tmp_path / 's.safetensors.tmp').exists()


@pytest.mark.parametrize('wrap', [
    lambda s: {
        'state_dict': s,
        'epoch': 3
    },
    lambda s: {
        'model': s,
        'optimizer': {}
    },
    lambda s: {
        'module.' + k: v
        for k, v in s.items()
    },
    lambda s: {
        'meta': {
            'x': 1
        },
        'state_dict': {
            'module.' + k: v
            for k, v in s.items()
        }
    },
])
def test_containers_are_unwrapped(tmp_path, wrap):
    torch.save(wrap(_state()), tmp_path / 'c.pth')
    _assert_same(safe_load(tmp_path / 'c.pth'), _state())


def test_explicit_container_key(tmp_path):
    torch.save(
        {
            'state_dict': {
                'x': torch.zeros(1)
            },
            'state_dict_ema': _state()
        }, tmp_path / 'e.pth')
    _assert_same(safe_load(tmp_path / 'e.pth', key='state_dict_ema'), _state())
    with pytest.raises(CheckpointError, match="no entry 'nope'"):
        safe_load(tmp_path / 'e.pth', key='nope')


def test_allow_listed_plain_values(tmp_path):
    import argparse
    obj = {
        'state_dict': _state(),
        'args': argparse.Namespace(lr=0.1),
        'best': np.float64(0.5),
        'hist': np.arange(3)
    }
    torch.save(obj, tmp_path / 'n.pth')
    loaded = safe_load_object(tmp_path / 'n.pth')
    assert loaded['args'].lr == 0.1 and loaded['best'] == 0.5
    _assert_same(safe_load(tmp_path / 'n.pth'), _state())


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize(
    'how', ['torch_zip', 'torch_legacy', 'pickle_p2', 'pickle_p5'])
def test_planted_pickle_is_refused(tmp_path, how):
    marker = tmp_path / MARKER
    payload = {'weight': torch.zeros(2), 'evil': _RunsCode(marker)}
    path = tmp_path / 'evil.pth'
    if how == 'torch_zip':
        torch.save(payload, path)
    elif how == 'torch_legacy':
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(
            pickle.dumps(
                _RunsCode(marker), protocol=2 if how == 'pickle_p2' else 5))
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path)
    assert not marker.exists(), 'the planted code ran'
    message = str(info.value)
    assert 'system' in message and str(path) in message
    assert info.value.global_name in ('posix.system', 'os.system', 'nt.system')


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.safetensors'):
        safe_load(tmp_path / 'nope.safetensors')


def test_directory_lists_weight_files(tmp_path):
    torch.save(_state(), tmp_path / 'pytorch_model.bin')
    with pytest.raises(IsADirectoryError, match='pytorch_model.bin'):
        safe_load(tmp_path)


def test_fifo_is_refused_by_what_it_is(tmp_path):
    # Opening a FIFO would block until a writer appears (a hang); before,
    # it was reported as an empty checkpoint.
    fifo = tmp_path / 'w.safetensors'
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError,
                       match=f'{fifo} is a FIFO \\(named pipe\\), not a '
                       'weights file'):
        safe_load(fifo)


def test_non_regular_kinds(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'dangling').symlink_to(tmp_path / 'gone.bin')
    (tmp_path / 'file').write_bytes(b'1')
    assert non_regular_kind(tmp_path / 'fifo') == 'a FIFO (named pipe)'
    assert non_regular_kind('/dev/null') == 'a character device'
    assert non_regular_kind(tmp_path / 'dangling') == \
        f'a symbolic link to {tmp_path / "gone.bin"}, which does not exist'
    for plain in ('file', 'missing', '.'):
        assert non_regular_kind(tmp_path / plain) is None


def _sharded(tmp_path, index_text=None):
    state = _state()
    save_file({'a.weight': state['a.weight']}, str(tmp_path / 's1.safetensors'))
    save_file({'a.bias': state['a.bias']}, str(tmp_path / 's2.safetensors'))
    index = tmp_path / 'model.safetensors.index.json'
    index.write_text(index_text if index_text is not None else (
        '{"metadata": {}, "weight_map": {"a.weight": "s1.safetensors", '
        '"a.bias": "s2.safetensors"}}'))
    return index


def test_sharded_export_loads_every_shard(tmp_path):
    _assert_same(safe_load_sharded(_sharded(tmp_path)), _state())


@pytest.mark.parametrize('text,expected', [
    ('{"metadata": {}, "weight_map": {a.weight: 1}}',
     'not valid JSON (Expecting property name enclosed in double quotes at '
     'line 1 column 33)'),
    ('', 'is empty'),
    ('[1, 2]', 'expected a JSON object with a "weight_map", got a list'),
    ('{"metadata": {}}', 'has no "weight_map" key (keys: [\'metadata\'])'),
    ('{"weight_map": {}}', '"weight_map" that is not a non-empty object'),
    ('{"weight_map": {"a.weight": 3}}', "e.g. 'a.weight': 3"),
    ('{"weight_map": {"a.weight": "s1.safetensors", "x": "s1.safetensors"}}',
     "1 keys listed in the index are in no shard, e.g. ['x']"),
])
def test_malformed_shard_index_names_the_file(tmp_path, text, expected):
    index = _sharded(tmp_path, text)
    with pytest.raises(CheckpointError) as info:
        safe_load_sharded(index)
    assert str(index) in str(info.value) and expected in str(info.value)


def test_shard_index_naming_a_missing_shard(tmp_path):
    index = _sharded(tmp_path, '{"weight_map": {"a.weight": "gone.bin"}}')
    with pytest.raises(FileNotFoundError,
                       match=f'{index} lists shard gone.bin, which is not'):
        safe_load_sharded(index)
    assert read_shard_index(index) == {'a.weight': 'gone.bin'}


def test_empty_file(tmp_path):
    (tmp_path / 'e.bin').write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        safe_load(tmp_path / 'e.bin')


@pytest.mark.parametrize('fmt', ['safetensors', 'zip', 'legacy'])
def test_truncated_file(tmp_path, fmt):
    path = tmp_path / f'w.{fmt}'
    big = {'w': torch.randn(64, 64)}
    if fmt == 'safetensors':
        save_file(big, str(path))
    else:
        torch.save(big, path, _use_new_zipfile_serialization=fmt == 'zip')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated'):
        safe_load(path)


def test_not_a_weights_file(tmp_path):
    (tmp_path / 'notes.pth').write_text('hello, these are not weights\n')
    with pytest.raises(CheckpointError, match='truncated, corrupt or not'):
        safe_load(tmp_path / 'notes.pth')


def test_no_tensors_inside(tmp_path):
    torch.save({'epoch': 3}, tmp_path / 'meta.pth')
    with pytest.raises(CheckpointError, match='no tensors'):
        safe_load(tmp_path / 'meta.pth')


class _Tiny(torch.nn.Module):

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.half_fc = torch.nn.Linear(2, 2).half()
        self.register_buffer('scale', torch.tensor(2.0))

    def forward(self, x):
        return self.fc(x) * self.scale


JIT_DEPRECATED = pytest.mark.filterwarnings('ignore:`torch.jit')


@JIT_DEPRECATED
@pytest.mark.parametrize('make', ['script', 'trace'])
def test_torchscript_archive_tensors_without_running_code(
        tmp_path, make, monkeypatch):
    module = _Tiny()
    scripted = (
        torch.jit.script(module) if make == 'script' else torch.jit.trace(
            module, torch.zeros(1, 3)))
    path = tmp_path / 'model.pt'
    torch.jit.save(scripted, str(path))
    assert 'model/constants.pkl' in zipfile.ZipFile(path).namelist()

    def no_jit(*args, **kwargs):
        raise AssertionError('torch.jit.load must not be called')

    monkeypatch.setattr(torch.jit, 'load', no_jit)
    _assert_same(safe_load(path), dict(scripted.state_dict()))


@JIT_DEPRECATED
def test_torchscript_archive_with_foreign_global_is_refused(tmp_path):
    """A hand-edited archive whose data.pkl calls os.system is refused."""
    module = torch.jit.script(_Tiny())
    path = tmp_path / 'model.pt'
    torch.jit.save(module, str(path))
    marker = tmp_path / MARKER
    evil = pickle.dumps(_RunsCode(marker), protocol=2)
    src = zipfile.ZipFile(path)
    out = tmp_path / 'evil.pt'
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = evil if item.filename.endswith('/data.pkl') else \
                src.read(item.filename)
            dst.writestr(item, data)
    with pytest.raises(UnsafeCheckpointError, match='system'):
        safe_load(out)
    assert not marker.exists()


def test_safe_load_keeps_process_wide_allow_list(tmp_path):
    """A safe_load must not remove globals allow-listed by someone else."""
    import numpy as np
    marker = np.dtype  # one of the classes the mmdet wing allow-lists
    torch.serialization.add_safe_globals([marker])
    path = tmp_path / 'w.pth'
    torch.save({'w': torch.zeros(2)}, path)
    safe_load(path)
    assert marker in torch.serialization.get_safe_globals()


def test_refused_global_is_named_in_torch_2_14_wording():
    from plugins.utils.checkpoint import _refused_global
    message = ('Unsupported global: GLOBAL deepspeed.runtime.ZeroStageEnum '
               'was not an allowed global by default.')
    assert _refused_global(message) == 'deepspeed.runtime.ZeroStageEnum'
