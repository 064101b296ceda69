import subprocess
import sys

CODE = '''
import sys
for name in ('mmdet', 'mmengine', 'mmcv'):
    sys.modules[name] = None  # as if not installed
import torch
from plugins.prompt_learning import VPTTPTSegmentor
model = VPTTPTSegmentor(model_name='BiomedCLIP-Tiny-test')
out = model(torch.rand(1, 3, 32, 32), ['a', 'b'])
assert out['H_semantic_maps'].shape == (1, 2, 100)
loaded = [m for m in sys.modules
          if m.split('.')[0] in ('mmdet', 'mmengine', 'mmcv')
          and sys.modules[m] is not None]
assert not loaded, loaded
'''


def test_prompt_learning_needs_no_openmmlab(repo_root):
    """plugins.prompt_learning runs where mmdet/mmengine/mmcv are absent."""
    result = subprocess.run([sys.executable, '-c', CODE], cwd=repo_root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
