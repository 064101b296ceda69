"""tools/train.py trains the demo, and --resume continues bit-exactly."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plugins  # noqa: F401  (allow-lists mmengine's checkpoint classes)

CONFIG = 'configs/_demo_/dino-4scale_r18-tiny_toy.py'


def _train(repo_root: Path, data_root: Path, work_dir: Path, max_iters: int,
           *extra: str) -> None:
    options = [
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters + 1}',
        'default_hooks.checkpoint.interval=4',
        'default_hooks.logger.interval=1',
        'train_dataloader.batch_size=1',
        f'train_dataloader.dataset.data_root={data_root}/',
        'train_dataloader.dataset.ann_file=annotations/instances_train.json',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
    ]
    cmd = [sys.executable, 'tools/train.py', CONFIG, '--work-dir',
           str(work_dir), *extra, '--cfg-options', *options]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _weights(path: Path) -> dict:
    # weights_only=True: the same restricted unpickler --resume goes through.
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(repo_root, toy_data_root, tmp_path):
    _train(repo_root, toy_data_root, tmp_path / 'full', 8)
    _train(repo_root, toy_data_root, tmp_path / 'part', 4)
    assert (tmp_path / 'part' / 'iter_4.pth').is_file()
    _train(repo_root, toy_data_root, tmp_path / 'part', 8, '--resume')

    full = _weights(tmp_path / 'full' / 'iter_8.pth')
    resumed = _weights(tmp_path / 'part' / 'iter_8.pth')
    assert resumed['meta']['iter'] == full['meta']['iter'] == 8
    assert full['state_dict'].keys() == resumed['state_dict'].keys()
    for key, value in full['state_dict'].items():
        torch.testing.assert_close(resumed['state_dict'][key], value,
                                   rtol=0, atol=1e-6, msg=key)
    # A sanity check that the test can fail: training moved the weights.
    start = _weights(tmp_path / 'part' / 'iter_4.pth')['state_dict']
    assert any(not torch.equal(start[k], v)
               for k, v in full['state_dict'].items() if v.is_floating_point())


def test_checkpoint_loads_weights_only_with_allow_list(
        repo_root, toy_data_root, tmp_path):
    from plugins.engine import MMENGINE_CHECKPOINT_CLASSES
    _train(repo_root, toy_data_root, tmp_path / 'run', 4)
    ckpt = tmp_path / 'run' / 'iter_4.pth'
    assert 'message_hub' in _weights(ckpt)
    # Without the allow-list torch's safe unpickler refuses mmengine's
    # HistoryBuffer: the allow-list is what makes --resume work.
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(Exception, match='HistoryBuffer'):
            torch.load(ckpt, map_location='cpu', weights_only=True)
    finally:
        torch.serialization.add_safe_globals(saved)
    assert set(MMENGINE_CHECKPOINT_CLASSES) <= set(
        torch.serialization.get_safe_globals())
