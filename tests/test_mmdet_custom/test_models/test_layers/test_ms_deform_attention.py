"""The mmdet drop-in (plugins.mmdet_custom.models.layers) against mmcv's module."""
import copy
import os

import pytest
import torch

# mmdet and mmcv's ops are part of set-up: a broken mmcv build must fail
# here, not skip.
from mmcv.ops import MultiScaleDeformableAttention  # noqa: E402

from plugins.mmdet_custom.engine.hooks import MSDeformAttentionHook  # noqa: E402
from plugins.mmdet_custom.models.layers import (  # noqa: E402
    MSDeformAttention, convert_ms_deform_attention)

pytestmark = pytest.mark.usefixtures('kernel_loaded')

SHAPES = torch.tensor([[8, 6], [4, 3]])
STARTS = torch.tensor([0, 48])


def _pair(**kwargs):
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(**kwargs).eval()
    # Non-trivial offsets and weights (the default init zeroes them).
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = MSDeformAttention(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize('batch_first', [False, True])
@pytest.mark.parametrize('ref_dim', [2, 4])
def test_matches_mmcv_module(batch_first, ref_dim):
    theirs, ours = _pair(embed_dims=32, num_heads=4, num_levels=2, num_points=3,
                         batch_first=batch_first)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    N, Lq, S = 2, 5, 60
    query, value = torch.rand(N, Lq, 32), torch.rand(N, S, 32)
    pos = torch.rand(N, Lq, 32)
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[1, -10:] = True
    ref = torch.rand(N, Lq, 2, ref_dim)
    if not batch_first:
        query, value, pos = (t.transpose(0, 1) for t in (query, value, pos))
    kwargs = dict(value=value, query_pos=pos, key_padding_mask=mask,
                  reference_points=ref, spatial_shapes=SHAPES,
                  level_start_index=STARTS)
    torch.testing.assert_close(ours(query, **kwargs), theirs(query, **kwargs),
                               atol=1e-5, rtol=1e-5)


def test_registered_and_built_from_config():
    from mmdet.registry import HOOKS, MODELS
    attn = MODELS.build(dict(type='MSDeformAttention', embed_dims=32,
                             num_heads=4, num_levels=2, num_points=2))
    assert isinstance(attn, MultiScaleDeformableAttention)
    assert isinstance(HOOKS.build(dict(type='MSDeformAttentionHook')),
                      MSDeformAttentionHook)


def _tiny_dino():
    """mmdet's DINO config, shrunk: ResNet-18, one encoder/decoder layer."""
    import mmdet
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs',
                        'dino', 'dino-4scale_r50_8xb2-12e_coco.py')
    cfg = Config.fromfile(path).model
    cfg.backbone.update(depth=18, init_cfg=None, norm_cfg=dict(type='BN'),
                        frozen_stages=-1)
    cfg.neck.in_channels = [128, 256, 512]
    cfg.encoder.num_layers = 1
    cfg.decoder.num_layers = 1
    cfg.num_queries = 20
    cfg.test_cfg.max_per_img = 20
    cfg.bbox_head.num_classes = 3
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    # Non-zero sampling offsets/attention logits, so the test means something.
    for m in model.modules():
        if isinstance(m, MultiScaleDeformableAttention):
            torch.nn.init.normal_(m.sampling_offsets.weight, std=0.05)
            torch.nn.init.normal_(m.attention_weights.weight, std=0.05)
    return model.eval()


@pytest.mark.parametrize('name', ['num_heads', 'num_levels', 'num_points'])
def test_sizes_below_one_are_refused(name):
    # mmcv's class builds num_points=0 (all-zero attention) and divides by
    # num_heads=0; ours names the argument first.
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2)
    kwargs[name] = 0
    with pytest.raises(ValueError, match=rf'^MSDeformAttention: {name} must '
                                         rf'be an integer >= 1, got 0'):
        MSDeformAttention(**kwargs)
    # positional arguments are bound like mmcv's
    assert MSDeformAttention(32, 4, 2, 2).num_points == 2


def test_tiny_dino_forward_matches_mmcv(monkeypatch):
    from mmdet.structures import DetDataSample

    # The attention module runs the shared forward of plugins.layers, which
    # calls the op through this module attribute.
    from plugins.layers import ms_deform_cross_attention
    calls = []
    op = ms_deform_cross_attention.ms_deform_attn

    def counting_op(*args):
        calls.append(args[0].shape)
        return op(*args)

    monkeypatch.setattr(ms_deform_cross_attention, 'ms_deform_attn',
                        counting_op)
    theirs = _tiny_dino()
    ours = copy.deepcopy(theirs)
    assert convert_ms_deform_attention(ours) == 2  # encoder + decoder layer
    assert not any(type(m) is MultiScaleDeformableAttention
                   for m in ours.modules())
    assert ours.state_dict().keys() == theirs.state_dict().keys()

    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    samples = [DetDataSample(metainfo=dict(img_shape=(64, 96),
                                           batch_input_shape=(64, 96),
                                           pad_shape=(64, 96),
                                           scale_factor=(1., 1.)))
               for _ in range(2)]
    with torch.no_grad():
        expected = theirs(images, copy.deepcopy(samples), mode='tensor')
        actual = ours(images, copy.deepcopy(samples), mode='tensor')
    assert len(calls) == 2  # our op ran in the encoder and decoder layer
    flat_expected = torch.utils._pytree.tree_leaves(expected)
    flat_actual = torch.utils._pytree.tree_leaves(actual)
    assert len(flat_actual) == len(flat_expected) > 0
    for a, e in zip(flat_actual, flat_expected):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_hook_converts_the_runner_model():
    class FakeRunner:
        model = torch.nn.Sequential(MultiScaleDeformableAttention(
            embed_dims=32, num_heads=4, num_levels=2, num_points=2))

    params = list(FakeRunner.model.parameters())
    MSDeformAttentionHook().before_run(FakeRunner)
    assert type(FakeRunner.model[0]) is MSDeformAttention
    assert list(FakeRunner.model.parameters()) == params  # same objects
