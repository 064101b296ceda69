"""End to end: tools/train_llava.py under DeepSpeed (CPU accelerator, ZeRO-2).

Small on purpose (a few seconds of training per run); the 60-step run of
the acceptance criteria is ``scripts/train_deformable.sh``.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

STEPS, SAVE_AT = 30, 15


def _train(repo_root, data_root, out_dir, *extra, ds_config='zero2',
           launcher=(), timeout=900):
    """tools/train_llava.py (after ``launcher``, e.g. torchrun's arguments);
    later ``extra`` flags override the defaults here."""
    cmd = [sys.executable, *launcher,
           str(repo_root / 'tools' / 'train_llava.py'),
           '--deepspeed', ds_config,
           '--data_root', str(data_root), '--output_dir', str(out_dir),
           '--per_device_train_batch_size', '2', '--learning_rate', '1e-3',
           '--warmup_ratio', '0', '--seed', '0', *extra]
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_PORT'):
        env.pop(name, None)
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def _metrics(out_dir):
    with open(out_dir / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def deformable_run(repo_root, toy_data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('llava_run')
    log = _train(repo_root, toy_data_root, out_dir,
                 '--mm_projector_type', 'deformable', '--mm_n_heads', '8',
                 '--mm_n_points', '4', '--swin_type', 'base',
                 '--max_steps', str(STEPS), '--save_steps', str(SAVE_AT))
    return out_dir, log


def test_projector_is_logged_at_start(deformable_run):
    _, log = deformable_run
    assert 'mm_projector type: MultiScaleDeformableCrossAttentionAlignment' \
        in log
    assert 'n_levels=4, n_heads=8, n_points=4' in log
    assert log.index('mm_projector type:') < log.index('step 1/')


def test_losses_are_logged_by_name_and_fall(deformable_run):
    out_dir, log = deformable_run
    records = _metrics(out_dir)
    assert [r['step'] for r in records] == list(range(1, STEPS + 1))
    for name in ('loss', 'loss_llm', 'loss_mask', 'loss_dice'):
        assert all(name in r for r in records), name
        assert f'{name} ' in log
    for name in ('loss', 'loss_dice'):  # total loss and the mask Dice loss
        first = sum(r[name] for r in records[:3]) / 3
        last = sum(r[name] for r in records[-3:]) / 3
        assert last < first, (name, first, last)


def test_checkpoints_are_written(deformable_run):
    out_dir, _ = deformable_run
    for step in (SAVE_AT, STEPS):
        ckpt = out_dir / f'checkpoint-{step}'
        assert (ckpt / 'mp_rank_00_model_states.pt').is_file()
        assert (ckpt / 'model.safetensors').is_file()
        assert (ckpt / 'mm_projector.bin').is_file()
    assert (out_dir / 'latest').read_text().strip() == f'checkpoint-{STEPS}'
    assert (out_dir / 'config.json').is_file()
    assert (out_dir / 'tokenizer' / 'tokenizer.json').is_file()


def test_resume_continues_exactly(deformable_run, repo_root, toy_data_root):
    out_dir, _ = deformable_run
    original = {r['step']: r for r in _metrics(out_dir)}
    resumed_dir = out_dir.parent / (out_dir.name + '_resumed')
    log = _train(repo_root, toy_data_root, resumed_dir,
                 '--mm_projector_type', 'deformable',
                 '--max_steps', str(STEPS),
                 '--resume_from_checkpoint', str(out_dir / f'checkpoint-{SAVE_AT}'))
    assert f'at step {SAVE_AT}' in log
    resumed = _metrics(resumed_dir)
    assert [r['step'] for r in resumed] == list(range(SAVE_AT + 1, STEPS + 1))
    for record in resumed:
        assert record['loss'] == pytest.approx(
            original[record['step']]['loss'], rel=1e-4)
    assert (resumed_dir / f'checkpoint-{STEPS}' / 'model.safetensors').is_file()


@pytest.mark.slow
def test_two_process_zero2(repo_root, toy_data_root, tmp_path):
    """ZeRO-2 over 2 CPU processes (torchrun, gloo): trains, logs the
    rank-averaged losses, and writes one optimizer partition per rank."""
    from plugins.llava.distributed import free_port  # the trainer's own
    steps = 4
    out_dir = tmp_path / 'ddp'
    torchrun = ('-m', 'torch.distributed.run', '--nproc_per_node', '2',
                '--master_port', str(free_port()))
    _train(repo_root, toy_data_root, out_dir, '--per_device_train_batch_size',
           '1', '--mm_projector_type', 'deformable', '--max_steps', str(steps),
           launcher=torchrun)
    records = _metrics(out_dir)
    assert [r['step'] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r['loss']) for r in records)
    ckpt = out_dir / f'checkpoint-{steps}'
    partitions = sorted(p.name for p in ckpt.glob('*optim_states.pt'))
    assert len(partitions) == 2, partitions  # ZeRO-2: one shard per rank
    assert (ckpt / 'model.safetensors').is_file()


@pytest.mark.slow
def test_zero3_trains_exports_and_resumes(repo_root, toy_data_root, tmp_path):
    """ZeRO-3 (parameters partitioned): trains, the exported weights are
    gathered (full, finite tensors), and a resumed run repeats the losses."""
    from safetensors.torch import load_file
    steps = 4

    def run(out_dir, *extra):
        _train(repo_root, toy_data_root, out_dir, '--bf16', 'True',
               '--mm_projector_type', 'deformable', '--max_steps', str(steps),
               '--save_steps', '2', *extra, ds_config='zero3')
        return {r['step']: r['loss'] for r in _metrics(out_dir)}

    full = run(tmp_path / 'zero3')
    assert sorted(full) == list(range(1, steps + 1))
    weights = load_file(str(tmp_path / 'zero3' / f'checkpoint-{steps}' /
                            'model.safetensors'))
    assert weights and all(t.numel() > 0 and torch.isfinite(t.float()).all()
                           for t in weights.values())
    resumed = run(tmp_path / 'zero3_resumed', '--resume_from_checkpoint',
                  str(tmp_path / 'zero3' / 'checkpoint-2'))
    assert sorted(resumed) == [3, 4]
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-4), step
