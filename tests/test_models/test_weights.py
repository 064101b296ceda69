"""Weight formats -> open_clip layout, with a strict key check."""
import logging

import pytest
import torch

from plugins.models import (OPEN_CLIP_TINY_MODEL_NAME, create_model,
                            find_weights_file, is_openai_state_dict,
                            load_open_clip_weights)
from plugins.utils import StateDictMismatchError, safe_load

TINY = OPEN_CLIP_TINY_MODEL_NAME


@pytest.fixture(scope='module')
def saved(tiny_clip_files):
    return tiny_clip_files


@pytest.mark.parametrize('fmt', ['safetensors', 'bin', 'openai'])
def test_every_format_loads_with_all_keys(saved, fmt):
    model, files = saved
    target = create_model(TINY)
    state = load_open_clip_weights(target, files[fmt])
    assert set(state) == set(target.state_dict())
    for key, value in model.state_dict().items():
        got = target.state_dict()[key]
        if fmt == 'openai' and value.dtype == torch.float32 and \
                key != 'logit_scale' and value.dim() >= 2:
            value = value.half().float()  # OpenAI archives are fp16
        torch.testing.assert_close(
            got, value, rtol=0, atol=1e-3 if fmt == 'openai' else 0)


def test_openai_archive_layout(saved):
    _, files = saved
    state = safe_load(files['openai'])
    assert is_openai_state_dict(state)
    assert state['visual.proj'].dtype == torch.float16
    assert int(state['input_resolution']) == 224


def _activations(model):
    from open_clip.transformer import QuickGELU
    return (sum(isinstance(m, QuickGELU) for m in model.modules()),
            sum(type(m) is torch.nn.GELU for m in model.modules()))


def _quick_gelu_messages(caplog):
    return [r for r in caplog.records if 'QuickGELU' in r.getMessage()]


def test_openai_weights_switch_a_gelu_model_to_quick_gelu(saved, caplog):
    """OpenAI files run with QuickGELU whatever the model name says (as
    open_clip's build_model_from_openai_state_dict does), said once at
    INFO; the result is the '-quickgelu' model's."""
    model, files = saved
    target = create_model(TINY)  # GELU by name
    assert _activations(target) == (0, 6)  # 4 image + 2 text blocks
    with caplog.at_level(logging.DEBUG):
        load_open_clip_weights(target, files['openai'])
    assert _activations(target) == (6, 0)
    said = _quick_gelu_messages(caplog)
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and 'GELU' in r.getMessage()]
    reference = create_model(TINY, quick_gelu=True).eval()
    load_open_clip_weights(reference, files['openai'])
    image = torch.randn(2, 3, 224, 224)
    text = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        torch.testing.assert_close(
            target.eval().encode_image(image), reference.encode_image(image),
            rtol=0, atol=0)
        torch.testing.assert_close(
            target.encode_text(text), reference.encode_text(text),
            rtol=0, atol=0)


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_open_clip_files_keep_the_named_activation(saved, fmt, caplog):
    _, files = saved
    target = create_model(TINY)
    with caplog.at_level(logging.DEBUG):
        load_open_clip_weights(target, files[fmt])
    assert _activations(target) == (0, 6)
    assert not _quick_gelu_messages(caplog)


def test_quick_gelu_model_with_openai_weights_says_nothing(saved, caplog):
    _, files = saved
    target = create_model(TINY, quick_gelu=True)
    with caplog.at_level(logging.DEBUG):
        load_open_clip_weights(target, files['openai'])
    assert _activations(target) == (6, 0)
    assert not _quick_gelu_messages(caplog)


def test_openai_detection_needs_metadata_next_to_an_image_tower(saved):
    model, files = saved
    openai = safe_load(files['openai'])
    assert is_openai_state_dict(openai)
    # open_clip's own files share every key name but carry no metadata
    assert not is_openai_state_dict(model.state_dict())
    # metadata alone (no OpenAI image tower) is not OpenAI's layout
    meta = {k: openai[k] for k in ('input_resolution', 'context_length')}
    assert not is_openai_state_dict(meta)
    # ModifiedResNet towers (RN50.pt ...) are OpenAI's too
    rn = dict(meta, **{'visual.layer1.0.conv1.weight': torch.zeros(1)})
    assert is_openai_state_dict(rn)


def test_every_clip_loader_switches(saved, tmp_path):
    """The loaders of CLIP Surgery, region scoring and prompt learning go
    through the same mechanism."""
    from plugins.models import build_clip_surgery
    from plugins.prompt_learning.vpt_tpt_segmentor import build_clip
    from plugins.scoring import build_region_scorer
    _, files = saved
    tower, clip, _, _ = build_clip_surgery(TINY, files['openai'],
                                           surgery_depth=2)
    assert _activations(tower) == (4, 0) and _activations(clip) == (6, 0)
    scorer = build_region_scorer(TINY, files['openai'])
    assert _activations(scorer.model) == (6, 0)
    clip, _ = build_clip(TINY, str(files['openai']))
    assert _activations(clip) == (6, 0)


def test_wrong_layout_lists_keys_and_suggests_converter(tmp_path, saved):
    model, _ = saved
    state = {
        k.replace('visual.', 'image_encoder.'): v
        for k, v in model.state_dict().items()
    }
    torch.save(state, tmp_path / 'wrong.bin')
    with pytest.raises(StateDictMismatchError) as info:
        load_open_clip_weights(create_model(TINY), tmp_path / 'wrong.bin')
    msg = str(info.value)
    assert 'missing keys: [visual.' in msg
    assert 'unexpected keys: [image_encoder.' in msg
    assert 'convert_clip_checkpoint.py' in msg and 'wrong.bin' in msg


def test_other_architecture_reports_shapes(saved):
    model, _ = saved
    state = dict(model.state_dict())
    state['visual.proj'] = torch.zeros(64, 16)
    with pytest.raises(
            StateDictMismatchError, match='visual.proj: checkpoint'):
        load_open_clip_weights(create_model(TINY), state)


def test_legacy_bert_position_ids_are_dropped():
    model = create_model('BiomedCLIP-Tiny-test')
    state = dict(model.state_dict())
    state['text.transformer.embeddings.position_ids'] = torch.arange(256)[None]
    load_open_clip_weights(create_model('BiomedCLIP-Tiny-test'), state)


def test_find_weights_file_prefers_safetensors(tmp_path):
    for name in ('open_clip_pytorch_model.bin', 'open_clip_model.safetensors'):
        (tmp_path / name).write_bytes(b'x')
    assert find_weights_file(tmp_path).name == 'open_clip_model.safetensors'
    with pytest.raises(FileNotFoundError, match='not found'):
        find_weights_file(tmp_path / 'missing')


def _convert(*argv):
    from tools.convert_clip_checkpoint import main  # repo root on sys.path
    return main([str(a) for a in argv])


@pytest.mark.parametrize('fmt', ['bin', 'openai'])
def test_converter_writes_loadable_safetensors(saved, tmp_path, fmt):
    model, files = saved
    out = tmp_path / 'out.safetensors'
    assert _convert(files[fmt], out, '--model-name', TINY, '--dtype',
                    'float32') == 0
    state = safe_load(out)
    assert all(v.dtype != torch.float16 for v in state.values())
    target = create_model(TINY)
    load_open_clip_weights(target, out)
    torch.testing.assert_close(
        target.visual.proj,
        model.visual.proj,
        rtol=0,
        atol=1e-3 if fmt == 'openai' else 0)


def test_converter_fixes_a_layout_with_rename(saved, tmp_path, capsys):
    model, _ = saved
    wrong = {
        'module.' + k.replace('visual.', 'image_encoder.'): v
        for k, v in model.state_dict().items()
    }
    torch.save({'model': wrong}, tmp_path / 'wrong.pth')
    out = tmp_path / 'fixed.safetensors'
    assert _convert(tmp_path / 'wrong.pth', out, '--model-name', TINY) == 1
    assert 'unexpected keys: [image_encoder.' in capsys.readouterr().err
    assert _convert(tmp_path / 'wrong.pth', out, '--model-name', TINY,
                    '--rename', r'^image_encoder\.=visual.') == 0
    load_open_clip_weights(create_model(TINY), out)


def test_converter_refuses_unsafe_and_missing(tmp_path, capsys):
    assert _convert(tmp_path / 'none.bin', tmp_path / 'o.safetensors') == 1
    assert 'none.bin' in capsys.readouterr().err
    assert _convert(tmp_path / 'none.bin', tmp_path / 'o.bin') == 2
