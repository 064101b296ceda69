import logging
from types import SimpleNamespace

import pytest
import torch

from plugins.llava import (SWIN_DIMS, build_vision_projector,
                           load_projector_weights)
from plugins.layers import MultiScaleDeformableCrossAttentionAlignment


def _swin_maps(swin_type, image=512, batch=2, dtype=torch.float32):
    return [torch.randn(batch, c, image // s, image // s, dtype=dtype)
            for c, s in zip(SWIN_DIMS[swin_type], (4, 8, 16, 32))]


def _cfg(**kwargs):
    base = dict(mm_projector_type='deformable', swin_type='base',
                projector_outdim=2048)
    base.update(kwargs)
    return SimpleNamespace(**base)


@pytest.mark.parametrize('swin_type,outdim', [('base', 2048),
                                              ('large', 2560)])
def test_swin_maps_to_llm_tokens(swin_type, outdim):
    torch.manual_seed(0)
    projector = build_vision_projector(
        _cfg(swin_type=swin_type, projector_outdim=outdim))
    assert isinstance(projector, MultiScaleDeformableCrossAttentionAlignment)
    maps = _swin_maps(swin_type)
    assert [tuple(m.shape) for m in maps][0] == (
        2, SWIN_DIMS[swin_type][0], 128, 128)
    out = projector(maps)
    assert out.shape == (2, 256, outdim)
    # PSALM hands the projector half-precision features.
    for dtype in (torch.float16, torch.bfloat16):
        half = projector([m.to(dtype) for m in maps])
        assert half.shape == (2, 256, outdim)
        assert torch.isfinite(half).all()
    res = {f'res{i + 2}': m for i, m in enumerate(maps)}
    torch.testing.assert_close(projector(res), out)


def test_build_logs_type_and_settings(caplog):
    with caplog.at_level(logging.INFO, logger='plugins.llava'):
        build_vision_projector(_cfg(mm_n_points=8, mm_hidden_dim=128))
    assert ('mm_projector type: MultiScaleDeformableCrossAttentionAlignment'
            in caplog.text)
    assert 'n_levels=4, n_heads=8, n_points=8' in caplog.text


def test_psalm_projector_types():
    x = torch.randn(2, 1024, 32, 32)
    swin_conv = build_vision_projector(SimpleNamespace(
        mm_projector_type='swin_conv', mm_input_embeds=1024,
        projector_outdim=2048))
    assert swin_conv(x).shape == (2, 256, 2048)
    assert swin_conv(_swin_maps('base', image=1024, batch=2)).shape == (
        2, 256, 2048)
    tokens = torch.randn(2, 10, 1024)
    cfg = SimpleNamespace(mm_hidden_size=1024, hidden_size=2048)
    cfg.mm_projector_type = 'linear'
    assert build_vision_projector(cfg)(tokens).shape == (2, 10, 2048)
    cfg.mm_projector_type = 'mlp3x_gelu'
    mlp = build_vision_projector(cfg)
    assert len([m for m in mlp if isinstance(m, torch.nn.Linear)]) == 3
    assert mlp(tokens).shape == (2, 10, 2048)
    cfg.mm_projector_type = 'identity'
    assert build_vision_projector(cfg)(tokens) is tokens


@pytest.mark.parametrize('kwargs,match', [
    (dict(mm_n_heads=8, mm_hidden_dim=250),
     r'mm_n_heads \(8\) must divide mm_hidden_dim \(250\)'),
    (dict(swin_type='huge'), "unknown swin_type 'huge'"),
    (dict(mm_projector_type='conv3d'), "unknown mm_projector_type 'conv3d'"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_vision_projector(_cfg(**kwargs))


@pytest.mark.parametrize('kwargs,match', [
    # Was: `int(x or DEFAULT_NUM_TOKENS)` built 256 tokens for 0.
    (dict(mm_num_tokens=0), r'mm_num_tokens must be an integer >= 1, got 0'),
    (dict(mm_num_tokens=-16), r'mm_num_tokens must be an integer >= 1, '
                              r'got -16'),
    (dict(mm_num_tokens=10), r'mm_num_tokens \(10\) must be a square'),
    (dict(mm_n_points=0), r'mm_n_points must be an integer >= 1, got 0'),
    (dict(mm_n_heads=0), r'mm_n_heads must be an integer >= 1, got 0'),
    (dict(mm_hidden_dim=0), r'mm_hidden_dim must be an integer >= 1, got 0'),
    (dict(mm_num_layers=-1), r'mm_num_layers must be an integer >= 0'),
    (dict(mm_vision_dims=[]), r'mm_vision_dims must list 1 to 5 levels'),
    (dict(mm_vision_dims=[128, 0]), r'mm_vision_dims\[1\] must be an '
                                    r'integer >= 1, got 0'),
    # Was: projector_outdim=0 fell back to hidden_size silently.
    (dict(projector_outdim=0, hidden_size=2048),
     r'projector_outdim must be an integer >= 1, got 0'),
    (dict(projector_outdim=None, hidden_size=-5),
     r'hidden_size must be an integer >= 1, got -5'),
    (dict(mm_projector_type='swin_conv', projector_outdim=0),
     r"\(mm_projector_type='swin_conv'\): projector_outdim must be an "
     r"integer >= 1, got 0"),
    (dict(mm_projector_type='linear', mm_hidden_size=0, hidden_size=8),
     r'mm_hidden_size must be an integer >= 1, got 0'),
    (dict(mm_projector_type='mlp0x_gelu', mm_hidden_size=8, hidden_size=8),
     r'the N of mlp\{N\}x_gelu must be an integer >= 1, got 0'),
])
def test_size_errors_name_the_attribute(kwargs, match):
    with pytest.raises(ValueError, match=r'^build_vision_projector.*' + match):
        build_vision_projector(_cfg(**kwargs))


def test_none_means_the_default_token_count():
    projector = build_vision_projector(_cfg(mm_num_tokens=None, mm_num_layers=None,
                                            mm_hidden_dim=32, mm_n_heads=4))
    assert projector.num_queries == 256 and len(projector.layers) == 2
    projector = build_vision_projector(_cfg(mm_num_tokens=4, mm_hidden_dim=32,
                                            mm_n_heads=4))
    assert projector.num_queries == 4


def test_wrong_maps_name_expected_and_received():
    projector = build_vision_projector(_cfg(mm_hidden_dim=64, mm_n_heads=4))
    maps = _swin_maps('base', image=128)
    with pytest.raises(ValueError, match=r'expected 4 NCHW feature maps with '
                       r'channels \[128, 256, 512, 1024\], got 3'):
        projector(maps[:3])
    with pytest.raises(ValueError, match='got 4 with shapes'):
        projector(_swin_maps('large', image=128))


def test_loader_refuses_a_file_that_loads_nothing(tmp_path):
    projector = build_vision_projector(_cfg(mm_hidden_dim=64, mm_n_heads=4))
    path = tmp_path / 'mm_projector.bin'
    torch.save({'mm_projector.0.weight': torch.zeros(3)}, path)
    with pytest.raises(ValueError, match='no key matches'):
        load_projector_weights(projector, str(path), strict=False)
    # A full file with PSALM's prefix loads with every key matched.
    state = {f'model.mm_projector.{k}': v.clone() + 1
             for k, v in projector.state_dict().items()}
    torch.save(state, path)
    result = load_projector_weights(projector, str(path), strict=True)
    assert not result.missing and not result.unexpected
    first = next(iter(projector.state_dict()))
    torch.testing.assert_close(projector.state_dict()[first],
                               state[f'model.mm_projector.{first}'])
    # strict=True refuses a partial file, naming what is missing.
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i},
               path)
    with pytest.raises(ValueError, match='missing'):
        load_projector_weights(projector, str(path), strict=True)


def test_llava_config_passes_a_zero_outdim_on_to_be_refused():
    """``LlavaSegConfig.projector_config`` used ``projector_outdim or
    hidden_size``: 0 became the LLM width silently."""
    from plugins.llava.config import LlavaSegConfig
    config = LlavaSegConfig(llm=dict(hidden_size=64), projector_outdim=0,
                            mm_hidden_dim=32, mm_n_heads=4)
    projector_cfg = config.projector_config(SWIN_DIMS['base'])
    assert projector_cfg.projector_outdim == 0
    with pytest.raises(ValueError, match='projector_outdim must be an integer '
                                         '>= 1, got 0'):
        build_vision_projector(projector_cfg)
    default = LlavaSegConfig(llm=dict(hidden_size=64))
    assert default.projector_config(SWIN_DIMS['base']).projector_outdim == 64
