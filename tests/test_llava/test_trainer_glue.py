"""DeepSpeed glue: config "auto" values, buffers under param-only casts,
safe checkpoint classes, the projector log line."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from plugins.llava.ds_config import resolve_ds_config
from plugins.llava.projector_summary import describe_projector
from plugins.llava.trainer import match_batchnorm_buffers


def test_ds_config_auto_values(repo_root):
    cfg = resolve_ds_config('zero2',
                            micro_batch_size=4, grad_accum_steps=2,
                            world_size=1, bf16=True, fp16=False,
                            hidden_size=128)
    assert cfg['train_batch_size'] == 8
    assert cfg['train_micro_batch_size_per_gpu'] == 4
    assert cfg['bf16']['enabled'] is True and cfg['fp16']['enabled'] is False
    assert cfg['zero_optimization']['reduce_bucket_size'] == 128 * 128
    z3 = resolve_ds_config('zero3',
                           micro_batch_size=1, grad_accum_steps=1,
                           world_size=2, bf16=False, fp16=False,
                           hidden_size=64)
    assert z3['zero_optimization']['stage'] == 3
    assert z3['zero_optimization']['stage3_param_persistence_threshold'] == 640
    with pytest.raises(ValueError, match='mutually exclusive'):
        resolve_ds_config({}, micro_batch_size=1, grad_accum_steps=1,
                          world_size=1, bf16=True, fp16=True, hidden_size=8)


def test_batchnorm_buffers_follow_a_param_only_cast():
    # DeepSpeed 0.19 casts parameters, not buffers, to bf16.
    block = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8)).train()
    for p in block.parameters():
        p.data = p.data.to(torch.bfloat16)
    x = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match='BFloat16|Float'):
        block(x)
    assert match_batchnorm_buffers(block, torch.bfloat16) == 1
    assert block(x).dtype == torch.bfloat16
    assert block[1].running_mean.dtype == torch.bfloat16


def test_deepspeed_checkpoint_classes_are_value_types():
    from plugins.llava.ds_checkpoint import deepspeed_checkpoint_classes
    names = {c.__name__ for c in deepspeed_checkpoint_classes()}
    assert names == {'LossScaler', 'DynamicLossScaler', 'fragment_address',
                     'ZeroStageEnum'}


def test_projector_summary_reads_the_built_module(tiny_model, tiny_config):
    line = describe_projector(tiny_model.mm_projector, tiny_config)
    assert line.startswith('mm_projector summary: type='
                           'MultiScaleDeformableCrossAttentionAlignment')
    assert 'n_levels=4, n_heads=8, n_points=4, hidden_dim=64' in line
    assert 'num_queries=16, out_dim=128' in line
    other = describe_projector(nn.Linear(4, 128), SimpleNamespace(
        mm_projector_type='linear', projector_outdim=None, hidden_size=128))
    assert 'type=Linear, mm_projector_type=linear, out_dim=128' in other
