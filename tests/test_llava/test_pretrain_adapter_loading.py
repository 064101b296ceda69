"""--pretrain_mm_mlp_adapter: a swin_conv file, converted by
tools/adapt_pretrain_to_deformable.py, loads into the tiny model's deformable
projector with every key matched."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from plugins.llava.projector_builder import build_vision_projector
from plugins.llava.trainer import load_adapter
from tools.adapt_pretrain_to_deformable import main as adapt_main

SWIN_B = [128, 256, 512, 1024]


@pytest.fixture(scope='module')
def baseline(tiny_config, tmp_path_factory):
    """PSALM's ``mm_projector.bin`` of a swin_conv projector: a torch pickle
    with ``model.mm_projector.*`` keys. Returns (path, output Linear weight)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config, mm_projector_type='swin_conv')
    swin_conv = build_vision_projector(cfg.projector_config(SWIN_B))
    path = tmp_path_factory.mktemp('adapter') / 'mm_projector.bin'
    torch.save({f'model.mm_projector.{k}': v
                for k, v in swin_conv.state_dict().items()}, path)
    return path, swin_conv.fc.weight.detach().clone()


def _deformable(tiny_config):
    projector = build_vision_projector(tiny_config.projector_config(SWIN_B))
    return SimpleNamespace(mm_projector=projector)


def test_adapted_file_loads_every_key(baseline, tiny_config, tmp_path):
    path, proj_weight = baseline
    adapted = tmp_path / 'mm_projector_deformable.bin'
    assert adapt_main([str(path), str(adapted), '--projector-outdim',
                       str(tiny_config.hidden_size), '--swin-type', 'base',
                       '--mm-hidden-dim', str(tiny_config.mm_hidden_dim)]) == 0
    model = _deformable(tiny_config)
    result = load_adapter(model, str(adapted))
    assert result.missing == [] and result.unexpected == []
    assert sorted(result.loaded) == sorted(model.mm_projector.state_dict())
    # The LLM-facing Linear was transferred from swin_conv.
    torch.testing.assert_close(model.mm_projector.output_proj[2].weight,
                               proj_weight)


def test_unconverted_file_is_refused(baseline, tiny_config):
    # PSALM would load nothing here and carry on; we refuse.
    with pytest.raises(ValueError, match='adapt_pretrain_to_deformable'):
        load_adapter(_deformable(tiny_config), str(baseline[0]))
