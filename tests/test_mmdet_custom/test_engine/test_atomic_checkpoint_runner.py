"""AtomicCheckpointRunner on a two-parameter model (fast, in process):
last_checkpoint is renamed into place, the leftovers of killed saves are
removed on start and on resume, and ``--resume auto`` gets past a damaged
last_checkpoint.  (tests/test_tools/test_train_resume.py runs the same
faults through tools/train.py on the demo detector.)"""
import itertools
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from plugins.mmdet_custom.engine.runner import (AtomicCheckpointHook,
                                                AtomicCheckpointRunner,
                                                find_resume_checkpoint,
                                                remove_stale_temporaries)

_names = itertools.count()


class _Line(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=(out - torch.stack(data_samples)).pow(2).mean())
        return out


class _Points(Dataset):
    inputs = torch.linspace(-1, 1, 24).reshape(12, 2)
    targets = inputs.sum(1, keepdim=True) * 0.5 + 1

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return dict(inputs=self.inputs[i], data_samples=self.targets[i])


def _runner(work_dir, max_iters, resume=False, runner_cls=None):
    torch.manual_seed(0)
    return (runner_cls or AtomicCheckpointRunner)(
        model=_Line(), work_dir=str(work_dir),
        experiment_name=f'atomic_runner_test_{next(_names)}',
        train_dataloader=dict(
            dataset=_Points(), batch_size=3, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmengine', resume=resume)


def _log(runner) -> str:
    return '\n'.join(p.read_text() for p in Path(runner.log_dir).glob('*.log'))


def _dead_pid() -> int:
    proc = subprocess.Popen(['true'])
    proc.wait()  # reaped: no such process any more
    return proc.pid


def _weights(path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def test_config_checkpoint_hook_becomes_the_atomic_one(tmp_path):
    runner = _runner(tmp_path, 1)
    kinds = [type(hook) for hook in runner.hooks]
    assert AtomicCheckpointHook in kinds


@pytest.mark.parametrize('runner_cls', [Runner, AtomicCheckpointRunner])
def test_last_checkpoint_is_renamed_into_place(tmp_path, runner_cls):
    record = tmp_path / 'last_checkpoint'
    record.write_text('previous')
    with open(record) as held:  # the file as it was before the save
        _runner(tmp_path, 1, runner_cls=runner_cls).train()
        held.seek(0)
        before = held.read()
    assert record.read_text() == str(tmp_path / 'iter_1.pth')
    if runner_cls is Runner:
        # mmengine truncates and rewrites the same file: a kill between the
        # two leaves it empty.
        assert before == str(tmp_path / 'iter_1.pth')
    else:
        # a new file renamed over the old one: never empty on disk
        assert before == 'previous'
        assert not list(tmp_path.glob('.last_checkpoint.tmp-*'))


def _plant(work_dir: Path, pid: int, live_pid: int) -> dict:
    """Leftovers of killed saves, and look-alikes that are not ours."""
    ours = [f'.iter_3.pth.tmp-{pid}', f'.epoch_2.pth.tmp-{pid}',
            f'.last_checkpoint.tmp-{pid}']
    others = [f'.iter_3.pth.tmp-{live_pid}',  # a running writer's
              '.iter_3.pth.tmp-abc', f'iter_3.pth.tmp-{pid}',
              f'.notes.tmp-{pid}', 'notes.txt',
              f'.last_checkpoint.tmp-{pid + 1}']
    for name in ours[:2] + others[:-1]:
        (work_dir / name).write_bytes(b'PK\x03\x04 cut short')
    (work_dir / ours[2]).mkdir()
    (work_dir / ours[2] / 'last_checkpoint').write_text('x')
    (work_dir / others[-1]).mkdir()  # holds something we never write
    (work_dir / others[-1] / 'data.bin').write_bytes(b'1')
    (work_dir / 'sub').mkdir()
    (work_dir / 'sub' / ours[0]).write_bytes(b'1')
    return dict(ours=ours, others=others + ['sub'])


def test_stale_temporaries_are_removed_on_start(tmp_path):
    sleeper = subprocess.Popen(['sleep', '60'])
    try:
        planted = _plant(tmp_path, _dead_pid(), sleeper.pid)
        runner = _runner(tmp_path, 1)
        runner.train()
    finally:
        sleeper.kill()
        sleeper.wait()
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(planted['ours'])
    assert set(planted['others']) <= left
    assert (tmp_path / 'sub' / planted['ours'][0]).exists()
    lines = [line for line in _log(runner).splitlines()
             if 'temporary file(s) of killed checkpoint saves' in line]
    assert len(lines) == 1, lines
    assert 'removed 3 ' in lines[0]
    assert all(name in lines[0] for name in planted['ours'])
    assert f'kept .iter_3.pth.tmp-{sleeper.pid}' in lines[0]


def test_nothing_to_remove_logs_nothing(tmp_path):
    assert remove_stale_temporaries(str(tmp_path)) == ([], [])
    runner = _runner(tmp_path, 1)
    runner.train()
    assert 'killed checkpoint saves' not in _log(runner)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 3-iteration run (iter_1..3.pth) and an uninterrupted 4-iteration
    one to compare resumed runs with."""
    full = tmp_path_factory.mktemp('full')
    _runner(full, 4).train()
    part = tmp_path_factory.mktemp('part')
    _runner(part, 3).train()
    return full, part


def _copy_run(src: Path, dst: Path) -> Path:
    for name in ('iter_1.pth', 'iter_2.pth', 'iter_3.pth', 'last_checkpoint'):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize('damage', ['empty', 'names_missing_file', 'absent',
                                    'empty_and_newest_truncated'])
def test_resume_auto_past_a_damaged_last_checkpoint(tmp_path, trained,
                                                    damage):
    full, part = trained
    work = _copy_run(part, tmp_path)
    record = work / 'last_checkpoint'
    if damage == 'absent':
        record.unlink()
    elif damage == 'names_missing_file':
        record.write_text(str(work / 'iter_7.pth'))
    else:
        record.write_text('')
    start = 3
    if damage == 'empty_and_newest_truncated':
        # as an in-place writer (plain mmengine) leaves a killed save
        data = (work / 'iter_3.pth').read_bytes()
        (work / 'iter_3.pth').write_bytes(data[:len(data) // 2])
        start = 2
    expected_path, problem = find_resume_checkpoint(str(work))
    assert expected_path == str(work / f'iter_{start}.pth')
    assert problem is not None

    runner = _runner(work, 4, resume=True)
    runner.train()
    log = _log(runner)
    assert f'resuming from the newest complete checkpoint in the work dir, ' \
           f'{work}/iter_{start}.pth' in log
    if start == 2:
        assert 'skipped incomplete iter_3.pth' in log
    assert f'resumed epoch: 0, iter: {start}' in log
    resumed = _weights(work / 'iter_4.pth')
    uninterrupted = _weights(full / 'iter_4.pth')
    assert resumed['meta']['iter'] == 4
    for key, value in uninterrupted['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key


def test_mmengine_alone_fails_on_an_empty_last_checkpoint(tmp_path, trained):
    # What the fallback fixes: an empty name, and no word about the file.
    work = _copy_run(trained[1], tmp_path)
    (work / 'last_checkpoint').write_text('')
    with pytest.raises(FileNotFoundError, match=' can not be found'):
        _runner(work, 4, resume=True, runner_cls=Runner).train()


def test_resume_auto_uses_last_checkpoint_when_it_is_sound(tmp_path, trained):
    work = _copy_run(trained[1], tmp_path)
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    assert find_resume_checkpoint(str(work)) == (str(work / 'iter_2.pth'),
                                                 None)
    runner = _runner(work, 4, resume=True)
    runner.train()
    assert 'resumed epoch: 0, iter: 2' in _log(runner)


def test_resume_auto_without_any_checkpoint_starts_fresh(tmp_path):
    path, problem = find_resume_checkpoint(str(tmp_path))
    assert path is None and 'holds no iter_*.pth' in problem
    (tmp_path / 'last_checkpoint').write_text('')
    (tmp_path / 'iter_5.pth').write_bytes(b'PK\x03\x04 cut')
    path, problem = find_resume_checkpoint(str(tmp_path))
    assert path is None and 'is empty' in problem
    assert 'no checkpoint in' in problem and 'iter_5.pth' in problem
    runner = _runner(tmp_path, 1, resume=True)
    runner.train()  # from iteration 0, not a crash on the empty name
    assert _weights(tmp_path / 'iter_1.pth')['meta']['iter'] == 1


def test_own_pid_leftover_is_stale(tmp_path):
    # A container restart can hand the new job its predecessor's PID.
    name = f'.iter_1.pth.tmp-{os.getpid()}'
    (tmp_path / name).write_bytes(b'1')
    assert remove_stale_temporaries(str(tmp_path)) == ([name], [])
