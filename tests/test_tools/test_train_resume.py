"""tools/train.py trains the demo, and --resume continues bit-exactly, also
after the job was killed (between saves or in the middle of one, leaving an
empty last_checkpoint or temporary files)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# the mmdet wing allow-lists mmengine's checkpoint classes on import
import plugins.mmdet_custom  # noqa: F401

CONFIG = 'configs/_demo_/dino-4scale_r18-tiny_toy.py'


def _train_cmd(data_root: Path, work_dir: Path, max_iters: int,
               ckpt_interval: int, *extra: str) -> list:
    options = [
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters + 1}',
        f'default_hooks.checkpoint.interval={ckpt_interval}',
        'default_hooks.logger.interval=1',
        'train_dataloader.batch_size=1',
        f'train_dataloader.dataset.data_root={data_root}/',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        # The val loop is built at start even when it never runs.
        f'val_dataloader.dataset.data_root={data_root}/',
        f'val_evaluator.ann_file={data_root}/annotations/instances_val.json',
    ]
    return [sys.executable, 'tools/train.py', CONFIG, '--work-dir',
            str(work_dir), *extra, '--cfg-options', *options]


def _train(repo_root, data_root, work_dir, max_iters, *extra,
           ckpt_interval=4) -> None:
    result = subprocess.run(
        _train_cmd(data_root, work_dir, max_iters, ckpt_interval, *extra),
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _start(repo_root, data_root, work_dir, max_iters, ckpt_interval):
    return subprocess.Popen(
        _train_cmd(data_root, work_dir, max_iters, ckpt_interval),
        cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc, condition, timeout=600, poll=0.005) -> None:
    """SIGKILL ``proc`` as soon as ``condition()`` holds."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, 'training ended before the kill point'
        assert time.time() < deadline, 'kill point never reached'
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _weights(path: Path) -> dict:
    # weights_only=True: the same restricted unpickler --resume goes through.
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    full, resumed = _weights(a), _weights(b)
    assert resumed['meta']['iter'] == full['meta']['iter']
    assert full['state_dict'].keys() == resumed['state_dict'].keys()
    for key, value in full['state_dict'].items():
        torch.testing.assert_close(resumed['state_dict'][key], value,
                                   rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def uninterrupted(repo_root, toy_data_root, tmp_path_factory) -> Path:
    """An 8-iteration run with checkpoints at 4 and 8."""
    work_dir = tmp_path_factory.mktemp('full')
    _train(repo_root, toy_data_root, work_dir, 8)
    return work_dir


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(repo_root, toy_data_root, tmp_path,
                                          uninterrupted):
    _train(repo_root, toy_data_root, tmp_path, 4)
    assert (tmp_path / 'iter_4.pth').is_file()
    _train(repo_root, toy_data_root, tmp_path, 8, '--resume')
    _assert_same_weights(uninterrupted / 'iter_8.pth', tmp_path / 'iter_8.pth')
    # The test can fail: training moved the weights between 4 and 8.
    start = _weights(tmp_path / 'iter_4.pth')['state_dict']
    end = _weights(uninterrupted / 'iter_8.pth')['state_dict']
    assert any(not torch.equal(start[k], v) for k, v in end.items()
               if v.is_floating_point())


@pytest.mark.slow
def test_sigkill_then_resume_auto(repo_root, toy_data_root, tmp_path,
                                  uninterrupted):
    proc = _start(repo_root, toy_data_root, tmp_path, 8, ckpt_interval=4)
    _kill_when(proc, lambda: (tmp_path / 'last_checkpoint').is_file())
    assert not (tmp_path / 'iter_8.pth').exists()
    _train(repo_root, toy_data_root, tmp_path, 8, '--resume', 'auto')
    _assert_same_weights(uninterrupted / 'iter_8.pth', tmp_path / 'iter_8.pth')


@pytest.mark.slow
def test_sigkill_during_save_keeps_previous_checkpoint(
        repo_root, toy_data_root, tmp_path):
    proc = _start(repo_root, toy_data_root, tmp_path, 6, ckpt_interval=1)

    def writing_second_checkpoint():
        return ((tmp_path / 'iter_1.pth').is_file() and
                any(tmp_path.glob('.iter_*.pth.tmp-*')))

    _kill_when(proc, writing_second_checkpoint)
    finals = sorted(tmp_path.glob('iter_*.pth'))
    assert finals, 'the first checkpoint must have survived'
    for path in finals:  # every checkpoint under its final name is complete
        assert _weights(path)['meta']['iter'] == int(path.stem.split('_')[1])
    _train(repo_root, toy_data_root, tmp_path, 6, '--resume', 'auto',
           ckpt_interval=1)
    assert _weights(tmp_path / 'iter_6.pth')['meta']['iter'] == 6


@pytest.mark.slow
def test_resume_auto_past_empty_last_checkpoint_and_killed_saves(
        repo_root, toy_data_root, tmp_path, uninterrupted):
    """The leftovers of kills at the worst moments: an empty
    last_checkpoint (mmengine rewrote it in place), a checkpoint cut short
    under its final name (an in-place writer) and a temporary file of a
    killed save.  --resume auto continues from the newest complete
    checkpoint, removes the temporary file, says both, and ends bit-exact."""
    _train(repo_root, toy_data_root, tmp_path, 4)
    (tmp_path / 'last_checkpoint').write_text('')
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_6.pth').write_bytes(data[:len(data) // 2])
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale = tmp_path / f'.iter_8.pth.tmp-{dead.pid}'
    stale.write_bytes(data[:1000])
    result = subprocess.run(
        _train_cmd(toy_data_root, tmp_path, 8, 4, '--resume', 'auto'),
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f'{tmp_path}/last_checkpoint is empty; resuming from the newest ' \
        f'complete checkpoint in the work dir, {tmp_path}/iter_4.pth ' \
        '(skipped incomplete iter_6.pth)' in log
    assert f'removed 1 temporary file(s) of killed checkpoint saves from ' \
        f'{tmp_path}: {stale.name}' in log
    assert not stale.exists()
    assert (tmp_path / 'last_checkpoint').read_text() == \
        str(tmp_path / 'iter_8.pth')
    _assert_same_weights(uninterrupted / 'iter_8.pth', tmp_path / 'iter_8.pth')


def test_checkpoint_loads_weights_only_with_allow_list(
        repo_root, toy_data_root, tmp_path):
    from plugins.mmdet_custom.engine.runner import MMENGINE_CHECKPOINT_CLASSES
    _train(repo_root, toy_data_root, tmp_path, 1, ckpt_interval=1)
    ckpt = tmp_path / 'iter_1.pth'
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


@pytest.mark.slow
def test_deterministic_flag_makes_training_bitwise_reproducible(
        repo_root, toy_data_root, tmp_path):
    """`randomness.deterministic=True` (the config's determinism switch):
    two runs from the same seed end with bit-identical weights on CPU."""
    flag = ('--cfg-options', 'randomness.deterministic=True')
    for run in ('a', 'b'):
        # _train_cmd puts its own --cfg-options last; argparse merges both.
        _train(repo_root, toy_data_root, tmp_path / run, 3, *flag,
               ckpt_interval=3)
    a = _weights(tmp_path / 'a' / 'iter_3.pth')['state_dict']
    b = _weights(tmp_path / 'b' / 'iter_3.pth')['state_dict']
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
