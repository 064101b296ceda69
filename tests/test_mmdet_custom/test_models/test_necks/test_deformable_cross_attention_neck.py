import copy

import pytest
import torch
from mmengine.config import Config

import plugins.mmdet_custom  # noqa: F401  (registers the wing)
from mmdet.registry import MODELS
from plugins.mmdet_custom.models.necks import DeformableCrossAttentionNeck


@pytest.fixture(autouse=True)
def mmdet_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def test_single_scale_input_becomes_a_pyramid():
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([96], out_channels=64,
                                        num_extra_levels=3, n_heads=4)
    outs = neck([torch.randn(2, 96, 15, 20)])
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, 15, 20), (2, 64, 8, 10), (2, 64, 4, 5), (2, 64, 2, 3)]


def test_every_level_sees_every_other_level():
    """Changing only the coarsest extra level's input changes level 0."""
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([32, 48], out_channels=32,
                                        num_extra_levels=0, n_heads=4)
    fine, coarse = torch.randn(1, 32, 8, 8), torch.randn(1, 48, 4, 4)
    out_a = neck([fine, coarse])[0]
    out_b = neck([fine, coarse + 1.0])[0]
    assert not torch.allclose(out_a, out_b)


def test_multi_level_input_and_errors():
    neck = DeformableCrossAttentionNeck([16, 32, 64], out_channels=32,
                                        num_extra_levels=1, n_heads=4)
    maps = [torch.randn(1, c, s, s) for c, s in ((16, 16), (32, 8), (64, 4))]
    assert [o.shape[-1] for o in neck(maps)] == [16, 8, 4, 2]
    with pytest.raises(ValueError, match='expected 3 input maps'):
        neck(maps[:2])
    # the old name still works; the error uses the current one
    with pytest.raises(ValueError, match=r'num_heads \(5\) must divide '
                                         r'out_channels \(32\)'):
        DeformableCrossAttentionNeck([16], out_channels=32, n_heads=5)


def test_built_from_config():
    neck = MODELS.build(dict(type='DeformableCrossAttentionNeck',
                             in_channels=[16], out_channels=32, n_heads=4))
    assert len(neck([torch.randn(1, 16, 8, 8)])) == 4


@pytest.mark.slow
def test_dino_with_neck_trains_and_predicts(repo_root):
    """mmdet's DINO with a ResNet-18 and this neck: loss, step, predict."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(
        str(repo_root / 'configs/_demo_/dino-4scale_r18-tiny_toy.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.neck = dict(type='DeformableCrossAttentionNeck',
                          in_channels=[512], out_channels=256,
                          num_extra_levels=3)
    model_cfg.backbone.out_indices = (3,)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    images = torch.rand(2, 3, 256, 256) * 255
    samples = []
    for boxes, labels in (([[10., 12., 60., 70.]], [0]),
                          ([[30., 30., 90., 100.], [5., 5., 25., 25.]],
                           [1, 2])):
        sample = DetDataSample(metainfo=dict(
            img_shape=(256, 256), pad_shape=(256, 256),
            batch_input_shape=(256, 256), ori_shape=(256, 256),
            scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes),
                                           labels=torch.tensor(labels))
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=list(images.to(torch.uint8)),
                                        data_samples=samples), True)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    neck_before = copy.deepcopy(model.neck.state_dict())
    for _ in range(2):
        losses = model.loss(data['inputs'], data['data_samples'])
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(loss)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert any(not torch.equal(v, model.neck.state_dict()[k])
               for k, v in neck_before.items())
    model.eval()
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
    assert len(results) == 2
    assert results[0].pred_instances.bboxes.shape[1] == 4


# -- out_strides: finer levels by transposed convs, coarser by strided convs --
def test_out_strides_8_to_64_from_a_stride_16_map():
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([96], out_channels=64,
                                        out_strides=(8, 16, 32, 64),
                                        num_heads=4)
    outs = neck([torch.randn(2, 96, 15, 20)])
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, 30, 40), (2, 64, 15, 20), (2, 64, 8, 10), (2, 64, 4, 5)]
    # stride 8: one 2x2 stride-2 transposed conv halving the channels,
    # then norm and activation (ViTDet's simple feature pyramid)
    (up, ) = neck.fine_convs
    assert isinstance(up[0], torch.nn.ConvTranspose2d)
    assert (up[0].in_channels, up[0].out_channels) == (96, 48)
    assert up[0].kernel_size == (2, 2) and up[0].stride == (2, 2)
    assert isinstance(up[1], torch.nn.GroupNorm)
    assert isinstance(up[2], torch.nn.GELU)
    assert len(neck.extra_convs) == 2  # 16 -> 32 -> 64
    assert neck.level_channels == [48, 96, 64, 64]
    assert neck.alignment.n_levels == 4


def test_out_strides_4_and_vit_b32_and_five_levels():
    neck = DeformableCrossAttentionNeck([32], out_channels=32,
                                        out_strides=(4, 8, 16, 32, 64),
                                        num_heads=4)
    outs = neck([torch.randn(1, 32, 6, 6)])
    assert [o.shape[-1] for o in outs] == [24, 12, 6, 3, 2]
    # stride 4: two transposed convs (32 -> 16 -> 8 channels)
    assert [m.out_channels for m in neck.fine_convs[0]
            if isinstance(m, torch.nn.ConvTranspose2d)] == [16, 8]
    # a stride-32 ViT (B/32): 8 and 16 both finer than the input
    neck32 = DeformableCrossAttentionNeck([32], out_channels=32,
                                          in_strides=[32],
                                          out_strides=[8, 16, 32, 64],
                                          num_heads=4)
    outs = neck32([torch.randn(1, 32, 5, 7)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 28), (10, 14),
                                                   (5, 7), (3, 4)]


def test_finer_levels_get_gradients_and_are_refined():
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([16], out_channels=32,
                                        out_strides=(8, 16, 32), num_heads=4)
    x = torch.randn(1, 16, 8, 8)
    outs = neck([x])
    sum(o.sum() for o in outs).backward()
    assert neck.fine_convs[0][0].weight.grad.abs().sum() > 0
    # every level sees every other: the stride-8 output depends on the
    # coarsest level's conv
    with torch.no_grad():
        before = neck([x])[0].clone()
        neck.extra_convs[0][0].weight.add_(1.0)
        assert not torch.allclose(before, neck([x])[0])


def test_num_layers_0_is_a_channel_mapper_style_baseline():
    torch.manual_seed(0)
    neck = DeformableCrossAttentionNeck([32, 48], out_channels=32,
                                        num_extra_levels=0, num_layers=0,
                                        num_heads=4)
    fine, coarse = torch.randn(1, 32, 8, 8), torch.randn(1, 48, 4, 4)
    out_a = neck([fine, coarse])[0]
    out_b = neck([fine, coarse + 1.0])[0]
    assert torch.equal(out_a, out_b)  # no cross-level refinement
    proj = neck.alignment.input_proj[0]
    assert torch.allclose(out_a, proj(fine), atol=1e-6)


def test_default_is_the_earlier_16_to_128_pyramid():
    neck = DeformableCrossAttentionNeck([16], out_channels=32, num_heads=4)
    assert neck.out_strides == [16, 32, 64, 128]
    assert len(neck.fine_convs) == 0 and len(neck.extra_convs) == 3


def test_old_argument_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="'n_heads' is renamed "
                      "'num_heads'"):
        neck = DeformableCrossAttentionNeck([16], out_channels=32,
                                            n_heads=4, n_points=2)
    attn = neck.alignment.layers[0].cross_attn
    assert (neck.alignment.n_heads, neck.alignment.n_points) == (4, 2)
    assert attn is not None
    with pytest.raises(TypeError, match="unexpected argument 'n_level'"):
        DeformableCrossAttentionNeck([16], n_level=3)


def test_stride_errors_name_the_numbers():
    with pytest.raises(ValueError, match='output stride 12 cannot be built'):
        DeformableCrossAttentionNeck([16], out_strides=(12, 16))
    with pytest.raises(ValueError, match=r'must increase'):
        DeformableCrossAttentionNeck([16], out_strides=(32, 16))
    with pytest.raises(ValueError, match='not both'):
        DeformableCrossAttentionNeck([16], out_strides=(16, 32),
                                     num_extra_levels=1)
    with pytest.raises(ValueError, match='one stride per input level'):
        DeformableCrossAttentionNeck([16, 32], in_strides=[16],
                                     out_strides=(16, 32))
    with pytest.raises(ValueError, match='1 to 5 levels'):
        DeformableCrossAttentionNeck([16], out_strides=(4, 8, 16, 32, 64,
                                                        128))


@pytest.mark.parametrize('kwargs,match', [
    # Was: num_points=0 built and returned all-zero attention; the others
    # failed later with "negative dimension -64", "integer modulo by zero"
    # or a division by zero inside torch.nn.init.
    (dict(num_points=0), r'num_points must be an integer >= 1, got 0'),
    (dict(num_points=-2), r'num_points must be an integer >= 1, got -2'),
    (dict(n_points=0), r'num_points must be an integer >= 1, got 0'),
    (dict(num_heads=0), r'num_heads must be an integer >= 1, got 0'),
    (dict(out_channels=0), r'out_channels must be an integer >= 1, got 0'),
    (dict(hidden_dim=0), r'hidden_dim must be an integer >= 1, got 0'),
    (dict(ffn_dim=-1), r'ffn_dim must be an integer >= 1, got -1'),
    (dict(num_layers=-1), r'num_layers must be an integer >= 0, got -1'),
    (dict(in_channels=[0]), r'in_channels\[0\] must be an integer >= 1'),
    (dict(out_strides=[0, 16]), r'out_strides\[0\] must be an integer '
                                r'>= 1, got 0'),
    (dict(in_strides=[-16]), r'in_strides\[0\] must be an integer >= 1'),
    (dict(num_extra_levels=-1), r'num_extra_levels must be an integer >= 0'),
])
def test_size_arguments_name_themselves(kwargs, match):
    args = dict(in_channels=[16], out_channels=32, num_heads=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=r'^DeformableCrossAttentionNeck: '
                                         + match):
        DeformableCrossAttentionNeck(**args)


def test_norm_cfg_builds_mmcv_norms():
    neck = MODELS.build(dict(type='DeformableCrossAttentionNeck',
                             in_channels=[32], out_channels=32,
                             out_strides=[8, 16, 32], num_heads=4,
                             norm_cfg=dict(type='GN', num_groups=4)))
    norms = [m for m in neck.fine_convs.modules()
             if isinstance(m, torch.nn.GroupNorm)]
    norms += [m for m in neck.extra_convs.modules()
              if isinstance(m, torch.nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [4, 4]
    assert len(neck([torch.randn(1, 32, 8, 8)])) == 3
