import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from plugins.llava import build_vision_projector, load_projector_weights


def _run_tool(repo_root, src, out, *extra):
    return subprocess.run(
        [sys.executable, 'tools/adapt_pretrain_to_deformable.py',
         str(src), str(out), '--projector-outdim', '256',
         '--mm-hidden-dim', '64', '--mm-n-heads', '4', *extra],
        cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_swin_conv_file_round_trips_into_deformable(repo_root, tmp_path):
    torch.manual_seed(0)
    swin_conv = build_vision_projector(SimpleNamespace(
        mm_projector_type='swin_conv', mm_input_embeds=1024,
        projector_outdim=256))
    # As PSALM's trainer saves mm_projector.bin: named_parameters() of the
    # whole model (no BatchNorm buffers), under 'model.mm_projector.'.
    source = {f'model.mm_projector.{k}': v.detach()
              for k, v in swin_conv.named_parameters()}
    assert 'model.mm_projector.fc.weight' in source and \
        'model.mm_projector.layer1.0.conv2.weight' in source
    src_path, out_path = tmp_path / 'mm_projector.bin', tmp_path / 'out.bin'
    torch.save(source, src_path)

    result = _run_tool(repo_root, src_path, out_path)
    assert result.returncode == 0, result.stderr
    assert 'transferred (2):' in result.stdout
    assert 'fc.weight' in result.stdout and 'dropped (9):' in result.stdout

    deformable = build_vision_projector(SimpleNamespace(
        mm_projector_type='deformable', swin_type='base',
        projector_outdim=256, mm_hidden_dim=64, mm_n_heads=4))
    loaded = load_projector_weights(deformable, str(out_path), strict=True)
    assert not loaded.missing and not loaded.unexpected
    state = deformable.state_dict()
    torch.testing.assert_close(state['output_proj.2.weight'],
                               swin_conv.fc.weight)
    torch.testing.assert_close(state['output_proj.2.bias'],
                               swin_conv.fc.bias)


@pytest.mark.parametrize('case', ['unknown_layout', 'wrong_outdim', 'empty'])
def test_refuses_with_nonzero_exit_and_writes_nothing(repo_root, tmp_path,
                                                      case):
    if case == 'unknown_layout':
        # e.g. a file already converted, or another projector's names.
        source = {'mm_projector.conv1.weight': torch.zeros(4, 4, 3, 3),
                  'mm_projector.proj.weight': torch.zeros(256, 2048)}
        match = 'not a swin_conv projector'
    elif case == 'wrong_outdim':
        source = {'model.mm_projector.fc.weight': torch.zeros(512, 2048),
                  'model.mm_projector.fc.bias': torch.zeros(512)}
        match = 'nothing transferred'
    else:
        source = {'model.embed_tokens.weight': torch.zeros(3, 4)}
        match = 'not a swin_conv projector'
    src_path, out_path = tmp_path / 'mm_projector.bin', tmp_path / 'out.bin'
    torch.save(source, src_path)
    result = _run_tool(repo_root, src_path, out_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert match in result.stderr and 'nothing written' in result.stderr
    assert not out_path.exists()
