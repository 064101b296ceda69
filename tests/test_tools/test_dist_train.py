"""tools/dist_train.sh: 2 CPU processes (gloo) == 1 process, same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plugins  # noqa: F401  (allow-lists mmengine's checkpoint classes)

CONFIG = 'configs/_demo_/dino-4scale_r18-tiny_toy.py'
ITERS = 4


def _options(data_root: Path, batch_per_proc: int) -> list:
    # Everything random or batch-dependent is pinned so that splitting a
    # batch over processes is the only difference: no flip, BN in eval mode,
    # fixed denoising groups with (practically) zero noise.
    return [
        f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS + 1}',
        f'default_hooks.checkpoint.interval={ITERS // 2}',
        f'train_dataloader.batch_size={batch_per_proc}',
        f'train_dataloader.dataset.data_root={data_root}/',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        f'val_dataloader.dataset.data_root={data_root}/',
        f'val_evaluator.ann_file={data_root}/annotations/instances_val.json',
        'train_dataloader.dataset.pipeline.3.prob=0.0',
        'model.backbone.norm_eval=True',
        'model.backbone.norm_cfg.requires_grad=False',
        # mmdet asserts both scales > 0; at 1e-12 no label flips and boxes
        # move by ~1e-12, far below the tolerance.
        'model.dn_cfg.label_noise_scale=1e-12', 'model.dn_cfg.box_noise_scale=1e-12',
        'model.dn_cfg.group_cfg.dynamic=False',
        'model.dn_cfg.group_cfg.num_groups=2',
        # SGD, not the demo's AdamW: Adam's first steps move every weight by
        # about lr * sign(grad), so a gradient that is ~0 and differs in its
        # last bit between the two reduction orders moves by 2 * lr (measured:
        # 2e-4 after 4 iterations with AdamW, 3e-6 with SGD at lr 0.1, while the
        # weights move by 3e-4 between iterations 2 and 4). The check is
        # about DDP reducing the same gradients, which SGD shows directly.
        'optim_wrapper.optimizer.type=SGD', 'optim_wrapper.optimizer.lr=0.1',
        'optim_wrapper.optimizer.momentum=0.9',
    ]


@pytest.mark.slow
def test_two_processes_match_one(repo_root, toy_data_root, tmp_path):
    single = [sys.executable, 'tools/train.py', CONFIG, '--work-dir',
              str(tmp_path / 'one'), '--cfg-options',
              *_options(toy_data_root, 2)]
    dist = ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
            str(tmp_path / 'two'), '--cfg-options',
            *_options(toy_data_root, 1)]
    from plugins.llava.trainer import _free_port  # a port nothing listens on
    env = dict(os.environ, MASTER_PORT=str(_free_port()),
               OMP_NUM_THREADS='1', PYTHON=sys.executable)
    for cmd in (single, dist):
        result = subprocess.run(cmd, cwd=repo_root, capture_output=True,
                                text=True, timeout=900, env=env)
        assert result.returncode == 0, (result.stdout[-3000:] +
                                        result.stderr[-3000:])
    one = torch.load(tmp_path / 'one' / f'iter_{ITERS}.pth',
                     weights_only=True)['state_dict']
    two = torch.load(tmp_path / 'two' / f'iter_{ITERS}.pth',
                     weights_only=True)['state_dict']
    assert one.keys() == two.keys()
    print('max |two - one|:', _max_abs_difference(two, one))
    for key in one:
        # Tolerance 1e-5: only the order of the gradient all-reduce differs.
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5,
                                   msg=key)
    # The check can fail: the weights moved between iterations 2 and 4 by
    # well over the tolerance.
    half = torch.load(tmp_path / 'one' / f'iter_{ITERS // 2}.pth',
                      weights_only=True)['state_dict']
    moved = _max_abs_difference(one, half)
    print('max weight change, iterations 2 -> 4:', moved)
    assert moved > 10 * 1e-5


def _max_abs_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a
               if a[k].is_floating_point())


def test_cpu_launch_refuses_nccl(monkeypatch):
    """A `--launcher pytorch` job without a GPU that asks for nccl is told
    what to change (instead of mmengine's cuda.set_device traceback)."""
    from mmengine.config import Config

    from plugins.mmdet_custom.engine.runner.cli import prepare_cpu_distributed
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config(dict(launcher='pytorch',
                      env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    with pytest.raises(RuntimeError, match='backend=gloo'):
        prepare_cpu_distributed(cfg)
    assert not prepare_cpu_distributed(Config(dict(launcher='none')))
