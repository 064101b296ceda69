"""The weight-conversion tools refuse bad inputs with one clear line:
convert_clip_checkpoint.py says what a non-regular path is (it said "not
found" for a FIFO), and adapt_pretrain_to_deformable.py answers every
refusal with ``error: ...; nothing written`` and exit code 2 (unreadable
inputs gave a traceback and exit 1)."""
import os
import subprocess
import sys

import pytest
import torch

from plugins.utils import save_safetensors
from tools.adapt_pretrain_to_deformable import main as adapt
from tools.convert_clip_checkpoint import main as convert


def test_convert_names_a_fifo(tmp_path, capsys):
    fifo = tmp_path / 'ViT-B-16.pt'
    os.mkfifo(fifo)
    assert convert([str(fifo), str(tmp_path / 'o.safetensors')]) == 1
    err = capsys.readouterr().err
    assert f'{fifo} is a FIFO (named pipe), not a weights file or a model ' \
        'folder' in err
    assert 'not found' not in err


def _swin_conv_file(path):
    from types import SimpleNamespace

    from plugins.llava import build_vision_projector
    torch.manual_seed(0)
    projector = build_vision_projector(SimpleNamespace(
        mm_projector_type='swin_conv', mm_input_embeds=1024,
        projector_outdim=256))
    torch.save({f'model.mm_projector.{k}': v.detach()
                for k, v in projector.named_parameters()}, path)
    return path


def _adapt(src, out):
    return adapt([str(src), str(out), '--projector-outdim', '256',
                  '--mm-hidden-dim', '64', '--mm-n-heads', '4'])


class _RunsCode:

    def __reduce__(self):
        return os.system, ('true', )


@pytest.mark.parametrize('case,expected', [
    ('missing', 'checkpoint file not found'),
    ('folder', 'is a directory'),
    ('fifo', 'is a FIFO (named pipe)'),
    ('empty', 'is empty (0 bytes)'),
    ('truncated', 'truncated, corrupt or not a weights file'),
    ('runs_code', 'refusing to load'),
    ('wrong_layout', 'not a swin_conv projector'),
    ('output_folder_missing', 'cannot write'),
    ('output_is_a_folder', 'cannot write'),
])
def test_adapt_refuses_every_bad_input_the_same_way(tmp_path, capsys, case,
                                                    expected):
    src, out = tmp_path / 'mm_projector.bin', tmp_path / 'out.bin'
    if case == 'folder':
        src.mkdir()
    elif case == 'fifo':
        os.mkfifo(src)
    elif case == 'empty':
        src.write_bytes(b'')
    elif case == 'truncated':
        data = _swin_conv_file(src).read_bytes()
        src.write_bytes(data[:len(data) // 2])
    elif case == 'runs_code':
        torch.save({'w': torch.zeros(1), 'x': _RunsCode()}, src)
    elif case == 'wrong_layout':
        save_safetensors({'model.embed_tokens.weight': torch.zeros(3, 4)},
                         src)
    elif case == 'output_folder_missing':
        _swin_conv_file(src)
        out = tmp_path / 'no' / 'such' / 'folder' / 'out.bin'
    elif case == 'output_is_a_folder':
        _swin_conv_file(src)
        out.mkdir()
    assert _adapt(src, out) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no traceback
    assert lines[0].startswith('error: ') and expected in lines[0]
    assert lines[0].endswith('; nothing written')
    assert str(src) in lines[0] or str(out) in lines[0]
    assert out.is_dir() if case == 'output_is_a_folder' else not out.exists()
    assert not [p for p in tmp_path.rglob('*') if '.tmp-' in p.name]


def test_adapt_refusal_exit_code_from_the_command_line(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, 'tools/adapt_pretrain_to_deformable.py',
         str(tmp_path / 'none.bin'), str(tmp_path / 'o.bin'),
         '--projector-outdim', '256'],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    assert f'checkpoint file not found: {tmp_path / "none.bin"}' in \
        result.stderr
