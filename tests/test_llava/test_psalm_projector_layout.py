"""PSALM's projector layouts (tests/data/psalm_projector_keys.json: key
names and shapes written from zamling/PSALM's builder) and forward."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from plugins.llava import ConvProjector, SwinConvProjector, build_vision_projector

FACTS = json.loads((Path(__file__).parents[1] / 'data' /
                    'psalm_projector_keys.json').read_text())
LAYOUTS = FACTS['layouts']


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_full_size_keys_and_shapes(name):
    layout = LAYOUTS[name]
    with torch.device('meta'):
        projector = build_vision_projector(SimpleNamespace(**layout['config']))
        out = projector(torch.empty(layout['input']))
    got = {k: list(v.shape) for k, v in projector.state_dict().items()}
    want = layout['state_dict']
    assert sorted(set(want) - set(got)) == [], 'missing'
    assert sorted(set(got) - set(want)) == [], 'unexpected'
    assert {k: got[k] for k in want if got[k] != want[k]} == {}, 'shapes'
    assert len(got) == layout['n_keys']
    params = {k for k, _ in projector.named_parameters()}
    assert len(params) == layout['n_parameters']
    assert list(out.shape) == layout['output']


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                rand = torch.rand(value.shape, generator=g)
                value.copy_(rand + 0.5 if 'running_var' in key
                            or key.endswith('bn1.weight') or
                            key.endswith('bn2.weight') else rand - 0.5)
    return module.eval()


def _bn(x, s, p):
    return F.batch_norm(x, s[p + '.running_mean'], s[p + '.running_var'],
                        s[p + '.weight'], s[p + '.bias'], False, 0.0, 1e-5)


def _block(x, s, p, stride, norm, conv2_times=2):
    """PSALM's BasicBlock, written from the facts: conv2 applied twice."""
    out = F.relu(norm(F.conv2d(x, s[p + '.conv1.weight'], stride=stride,
                               padding=1), s, p + '.bn1'))
    for _ in range(conv2_times):
        out = F.conv2d(out, s[p + '.conv2.weight'], padding=1)
    out = norm(out, s, p + '.bn2')
    res = norm(F.conv2d(x, s[p + '.downsample.0.weight'], stride=stride),
               s, p + '.downsample.1')
    return F.relu(out + res)


def _fc(x, s):
    return F.linear(x.flatten(2).transpose(1, 2), s['fc.weight'], s['fc.bias'])


def test_swin_conv_forward_matches_psalm_block():
    torch.manual_seed(0)
    projector = _randomise(SwinConvProjector(8, 12, mid_channels=16))
    s = projector.state_dict()
    x = torch.randn(2, 8, 6, 6)
    want = _fc(_block(x, s, 'layer1.0', 2, _bn), s)
    got = projector(x)
    assert got.shape == (2, 9, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The doubled conv2 matters: a textbook block gives other numbers.
    once = _fc(_block(x, s, 'layer1.0', 2, _bn, conv2_times=1), s)
    assert (got - once).abs().max() > 1e-2
    # The four-map list takes the last map, as PSALM's call site does.
    torch.testing.assert_close(projector([torch.randn(2, 4, 12, 12), x]), got)


@pytest.mark.parametrize('norm', ['layer', 'batch'])
def test_conv_forward_matches_psalm_blocks(norm):
    torch.manual_seed(0)
    projector = _randomise(ConvProjector(10, norm=norm, in_channels=4,
                                         widths=(6, 8), input_size=8))
    s = projector.state_dict()

    def ln(x, s, p):
        return F.layer_norm(x, x.shape[1:], s[p + '.weight'], s[p + '.bias'])

    fn = ln if norm == 'layer' else _bn
    x = torch.randn(2, 4, 8, 8)
    want = _fc(_block(_block(x, s, 'layer1.0', 2, fn), s, 'layer2.0', 2, fn),
               s)
    got = projector(x)
    assert got.shape == (2, 4, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_psalm_init():
    torch.manual_seed(0)
    projector = SwinConvProjector(64, 8, mid_channels=128)
    conv1 = projector.layer1[0].conv1.weight
    # N(0, sqrt(2 / (3*3*128))) as PSALM initialises its convolutions.
    assert abs(conv1.std().item() - (2 / (9 * 128)) ** 0.5) < 2e-3
    assert torch.equal(projector.layer1[0].bn1.weight, torch.ones(128))


def test_linear_and_mlp_read_hidden_size_as_psalm():
    cfg = SimpleNamespace(mm_projector_type='linear', mm_hidden_size=16,
                          hidden_size=24, projector_outdim=40)
    assert build_vision_projector(cfg).weight.shape == (24, 16)
    cfg.mm_projector_type = 'mlp2x_gelu'
    mlp = build_vision_projector(cfg)
    assert [tuple(m.weight.shape) for m in mlp[::2]] == [(24, 16), (24, 24)]
    with pytest.raises(ValueError, match='needs config.mm_hidden_size'):
        build_vision_projector(SimpleNamespace(mm_projector_type='linear',
                                               hidden_size=24))
    identity = build_vision_projector(SimpleNamespace(
        mm_projector_type='identity'))
    assert identity.config == {'mm_projector_type': 'identity'}
