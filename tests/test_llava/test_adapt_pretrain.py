import subprocess
import sys
from types import SimpleNamespace

import torch

from plugins.llava import build_vision_projector, load_projector_weights


def test_swin_conv_file_round_trips_into_deformable(repo_root, tmp_path):
    torch.manual_seed(0)
    swin_conv = build_vision_projector(SimpleNamespace(
        mm_projector_type='swin_conv', mm_input_embeds=1024,
        projector_outdim=256))
    source = {f'model.mm_projector.{k}': v
              for k, v in swin_conv.state_dict().items()}
    src_path, out_path = tmp_path / 'mm_projector.bin', tmp_path / 'out.bin'
    torch.save(source, src_path)

    result = subprocess.run(
        [sys.executable, 'tools/adapt_pretrain_to_deformable.py',
         str(src_path), str(out_path), '--projector-outdim', '256',
         '--mm-hidden-dim', '64', '--mm-n-heads', '4'],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'transferred (2):' in result.stdout
    assert 'proj.weight' in result.stdout and 'dropped (' in result.stdout

    deformable = build_vision_projector(SimpleNamespace(
        mm_projector_type='deformable', swin_type='base',
        projector_outdim=256, mm_hidden_dim=64, mm_n_heads=4))
    loaded = load_projector_weights(deformable, str(out_path), strict=True)
    assert not loaded.missing and not loaded.unexpected
    state = deformable.state_dict()
    torch.testing.assert_close(state['output_proj.2.weight'],
                               swin_conv.proj.weight)
    torch.testing.assert_close(state['output_proj.2.bias'],
                               swin_conv.proj.bias)
