import pytest
import torch

from plugins.layers import (MSDeformCrossAttention,
                            MultiScaleDeformableCrossAttentionAlignment,
                            reference_grid, sine_position_encoding)


def _maps(channels, sizes, batch=2, dtype=torch.float32):
    return [torch.randn(batch, c, s, s, dtype=dtype)
            for c, s in zip(channels, sizes)]


def _tiny(**kwargs):
    args = dict(in_channels=[16, 32, 48], hidden_dim=32, n_heads=4,
                n_points=2, num_layers=2, num_queries=16, out_dim=24)
    args.update(kwargs)
    return MultiScaleDeformableCrossAttentionAlignment(**args)


@pytest.mark.parametrize('mode,expected', [('pooled', 16), ('level', 16),
                                           ('all', 64 + 16 + 4),
                                           ('learnable', 16)])
def test_query_modes(mode, expected):
    torch.manual_seed(0)
    model = _tiny(query_mode=mode)
    out = model(_maps([16, 32, 48], [8, 4, 2]))
    query_level_tokens = {'level': 4}  # level -1 is 2x2 -> 4 tokens
    assert out.shape == (2, query_level_tokens.get(mode, expected), 24)


@pytest.mark.parametrize('levels', [1, 2, 5])
def test_any_number_of_levels(levels):
    channels = [8 * (i + 1) for i in range(levels)]
    sizes = [2 ** (levels - i + 1) for i in range(levels)]
    model = MultiScaleDeformableCrossAttentionAlignment(
        channels, hidden_dim=16, n_heads=2, n_points=2, num_queries=4)
    assert model(_maps(channels, sizes)).shape == (2, 4, 16)


def test_dict_input_uses_sorted_keys():
    torch.manual_seed(0)
    model = _tiny()
    maps = _maps([16, 32, 48], [8, 4, 2])
    as_dict = {'res4': maps[2], 'res2': maps[0], 'res3': maps[1]}
    torch.testing.assert_close(model(as_dict), model(maps))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    torch.manual_seed(0)
    model = _tiny()
    maps = _maps([16, 32, 48], [8, 4, 2])
    ref = model(maps)
    out = model([m.to(dtype) for m in maps])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
    # A bf16 module computes and returns bf16.
    if dtype == torch.bfloat16:
        out_bf16 = model.to(dtype)([m.to(dtype) for m in maps])
        assert out_bf16.dtype == dtype and torch.isfinite(out_bf16).all()


def test_standard_init():
    attn = MSDeformCrossAttention(32, num_heads=4, num_levels=2,
                                  num_points=3)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right (+x), points at distances 1, 2, 3; same per level.
    torch.testing.assert_close(bias[0, 0, :, 0], torch.tensor([1., 2., 3.]))
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    assert bias.abs().amax(-1).amin() >= 1.0


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for mode in ('pooled', 'learnable', 'all'):
        model = _tiny(query_mode=mode)
        # Non-zero attention logits so their gradient is not trivially 0.
        for layer in model.layers:
            torch.nn.init.normal_(layer.cross_attn.attention_weights.weight,
                                  std=0.1)
        model(_maps([16, 32, 48], [8, 4, 2])).square().mean().backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_overfits_a_regression_target():
    """The deformable sampling learns: loss falls by 10x on a fixed batch."""
    torch.manual_seed(0)
    model = _tiny(num_layers=1)
    maps = _maps([16, 32, 48], [8, 4, 2])
    target = torch.randn(2, 16, 24)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(maps), target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize('kwargs,match', [
    (dict(n_heads=5), r'n_heads \(5\) must divide hidden_dim \(32\)'),
    (dict(query_mode='bogus'), 'unknown query_mode'),
    (dict(num_queries=10), r'num_queries \(10\) must be a square'),
    (dict(in_channels=[8] * 6), '1 to 5 levels'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    # Each used to build (n_points=0: all-zero attention) or to fail later
    # with a message that does not name the argument (negative dimension,
    # modulo by zero, a division by zero in torch.nn.init).
    (dict(n_points=0), r'n_points must be an integer >= 1, got 0'),
    (dict(n_points=-2), r'n_points must be an integer >= 1, got -2'),
    (dict(n_heads=0), r'n_heads must be an integer >= 1, got 0'),
    (dict(hidden_dim=0), r'hidden_dim must be an integer >= 1, got 0'),
    (dict(in_channels=[16, 0, 48]), r'in_channels\[1\] must be an integer '
                                    r'>= 1, got 0'),
    (dict(in_channels=[]), r'in_channels must list 1 to 5 levels, got 0'),
    (dict(out_dim=0), r'out_dim must be an integer >= 1, got 0'),
    (dict(ffn_dim=0), r'ffn_dim must be an integer >= 1, got 0'),
    (dict(out_hidden_dim=0), r'out_hidden_dim must be an integer >= 1'),
    (dict(num_layers=-1), r'num_layers must be an integer >= 0, got -1'),
    (dict(num_queries=0), r'num_queries must be an integer >= 1, got 0'),
    (dict(n_points=2.5), r'n_points must be an integer >= 1, got 2\.5'),
    (dict(n_heads=True), r'n_heads must be an integer >= 1, got True'),
])
def test_size_arguments_are_checked_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=r'^MultiScaleDeformableCrossAttention'
                                         r'Alignment: ' + match):
        _tiny(**kwargs)


@pytest.mark.parametrize('name', ['num_heads', 'num_levels', 'num_points',
                                  'embed_dims'])
@pytest.mark.parametrize('value', [0, -1])
def test_attention_sizes_below_one_are_refused(name, value):
    args = dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2)
    args[name] = value
    with pytest.raises(ValueError, match=rf'MSDeformCrossAttention: {name} '
                                         rf'must be an integer >= 1, got '
                                         rf'{value}'):
        MSDeformCrossAttention(**args)


def test_zero_layers_and_explicit_sizes_still_build():
    # num_layers=0 is a legitimate setting (projection only); sizes given
    # explicitly are used as given.
    model = _tiny(num_layers=0, ffn_dim=8, out_hidden_dim=40)
    assert len(model.layers) == 0
    assert model(_maps([16, 32, 48], [8, 4, 2])).shape == (2, 16, 24)


def test_wrong_inputs_name_expected_and_received():
    model = _tiny()
    with pytest.raises(ValueError, match=r'expected 3 NCHW feature maps with '
                       r'channels \[16, 32, 48\], got 2'):
        model(_maps([16, 32], [8, 4]))
    with pytest.raises(ValueError, match=r'\(2, 33, 2, 2\)'):
        model(_maps([16, 32, 33], [8, 4, 2]))


def test_position_helpers():
    grid = reference_grid(2, 4)
    assert grid.shape == (8, 2)
    torch.testing.assert_close(grid[0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(grid[-1], torch.tensor([0.875, 0.75]))
    pos = sine_position_encoding(3, 5, 32)
    assert pos.shape == (15, 32)
    assert len({tuple(p.tolist()) for p in pos}) == 15  # all distinct
    with pytest.raises(ValueError, match='divisible by 4'):
        sine_position_encoding(2, 2, 30)
