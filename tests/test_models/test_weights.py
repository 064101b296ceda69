"""Weight formats -> open_clip layout, with a strict key check and the
activation checked against the weights' layout."""
import json
import logging

import pytest
import torch

from plugins.models import (MODEL_CONFIG_DIR, OPEN_CLIP_TINY_MODEL_NAME,
                            create_model, find_weights_file,
                            is_openai_state_dict, load_open_clip_weights)
from plugins.models.testing import save_clip_checkpoint
from plugins.models.weights import ActivationMismatchError
from plugins.utils import StateDictMismatchError, safe_load

TINY = OPEN_CLIP_TINY_MODEL_NAME


@pytest.fixture(scope='module')
def saved(tiny_clip_files):
    return tiny_clip_files


@pytest.fixture(scope='module')
def tiny_quickgelu(tmp_path_factory):
    """A test-only open_clip config ``ViT-Tiny-16-test-quickgelu`` (the tiny
    model with OpenAI's activation), registered like open_clip's own
    ``*-quickgelu`` configs."""
    import open_clip
    cfg = json.loads((MODEL_CONFIG_DIR / f'{TINY}.json').read_text())
    cfg['quick_gelu'] = True
    folder = tmp_path_factory.mktemp('configs')
    path = folder / f'{TINY}-quickgelu.json'
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return path.stem


@pytest.mark.parametrize('fmt', ['safetensors', 'bin', 'openai'])
def test_every_format_loads_with_all_keys(saved, fmt):
    model, files = saved
    # OpenAI's files need the activation they were trained with
    target = create_model(TINY, quick_gelu=fmt == 'openai')
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


def test_openai_weights_in_a_gelu_model_fail_naming_file_layout_key(saved):
    """The activation is the configuration's (as open_clip's
    ``ViT-B-16-quickgelu``): an OpenAI file in a GELU model is refused,
    naming the file, the layout seen and what to set."""
    _, files = saved
    target = create_model(TINY)  # GELU by name
    with pytest.raises(ActivationMismatchError) as info:
        load_open_clip_weights(target, files['openai'],
                               fix='quick_gelu=True')
    msg = str(info.value)
    assert str(files['openai']) in msg
    assert 'OpenAI CLIP layout' in msg and 'QuickGELU' in msg
    assert 'configured with gelu' in msg and 'quick_gelu=True' in msg
    assert _activations(target) == (0, 6)  # nothing switched


def test_real_names_suggest_the_quickgelu_config():
    from plugins.models import activation_fix
    assert activation_fix('ViT-B-16', True) == \
        "model_name='ViT-B-16-quickgelu' or quick_gelu=True"
    assert activation_fix('ViT-B-16-quickgelu', False, 'name', None) == \
        "name='ViT-B-16'"


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_open_clip_files_keep_the_configured_activation(saved, fmt):
    _, files = saved
    for quick, counts in ((None, (0, 6)), (True, (6, 0))):
        target = create_model(TINY, quick_gelu=quick)
        load_open_clip_weights(target, files[fmt])  # layout says nothing
        assert _activations(target) == counts


def test_quick_gelu_model_with_openai_weights_loads(saved, caplog):
    _, files = saved
    target = create_model(TINY, quick_gelu=True)
    with caplog.at_level(logging.DEBUG):
        load_open_clip_weights(target, files['openai'])
    assert _activations(target) == (6, 0)
    said = [r for r in caplog.records if str(files['openai'])
            in r.getMessage()]
    assert len(said) == 1 and 'loaded' in said[0].getMessage()


def test_no_false_random_init_warning(saved, caplog, tmp_path):
    """open_clip's "No pretrained weights loaded ... initialized randomly"
    is not emitted by our builds (they load local weights afterwards, and
    say once which file with how many tensors)."""
    import importlib.util
    from pathlib import Path

    from plugins.models import build_biomedclip, build_open_clip
    from plugins.models.concept_clip import build_concept_clip
    _, files = saved
    spec = importlib.util.spec_from_file_location(
        'conceptclip_folder',
        Path(__file__).resolve().parents[1] / 'data' / 'conceptclip_folder.py')
    folders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(folders)
    layout = folders.load_layout()
    concept = folders.write_folder(tmp_path / 'ConceptCLIP', layout,
                                   folders.random_state(layout))
    biomed = tmp_path / 'BiomedCLIP'
    biomed.mkdir()
    biomed_file = save_clip_checkpoint(create_model('BiomedCLIP-Tiny-test'),
                                       biomed, 'bin')
    with caplog.at_level(logging.DEBUG):
        build_open_clip(TINY, files['safetensors'])
        build_biomedclip(biomed, model_name='BiomedCLIP-Tiny-test')
        build_concept_clip(concept, config='ConceptCLIP-Tiny-test')
    assert not [r for r in caplog.records
                if 'No pretrained weights' in r.getMessage()]
    for path in (files['safetensors'], biomed_file,
                 concept / 'model.safetensors'):
        said = [r.getMessage() for r in caplog.records
                if str(path) in r.getMessage()]
        assert len(said) == 1 and 'loaded' in said[0], (path, said)


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


def test_every_clip_loader_checks(saved, tiny_quickgelu):
    """The loaders of CLIP Surgery, region scoring and prompt learning go
    through the same check: refused with the GELU name (naming the
    QuickGELU config), loaded with it."""
    from plugins.models import build_clip_surgery
    from plugins.prompt_learning.vpt_tpt_segmentor import build_clip
    from plugins.scoring import build_region_scorer
    _, files = saved
    for build in (lambda name: build_clip_surgery(name, files['openai'],
                                                  surgery_depth=2),
                  lambda name: build_region_scorer(name, files['openai']),
                  lambda name: build_clip(name, str(files['openai']))):
        with pytest.raises(ActivationMismatchError,
                           match=f"model_name='{tiny_quickgelu}'"):
            build(TINY)
    tower, clip, _, _ = build_clip_surgery(tiny_quickgelu, files['openai'],
                                           surgery_depth=2)
    assert _activations(tower) == (4, 0) and _activations(clip) == (6, 0)
    scorer = build_region_scorer(tiny_quickgelu, files['openai'])
    assert _activations(scorer.model) == (6, 0)
    clip, _ = build_clip(tiny_quickgelu, str(files['openai']))
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
def test_converter_writes_loadable_safetensors(saved, tiny_quickgelu,
                                               tmp_path, fmt):
    model, files = saved
    # OpenAI's files need the QuickGELU config (see the refusal below)
    name = tiny_quickgelu if fmt == 'openai' else TINY
    out = tmp_path / 'out.safetensors'
    assert _convert(files[fmt], out, '--model-name', name, '--dtype',
                    'float32') == 0
    state = safe_load(out)
    assert all(v.dtype != torch.float16 for v in state.values())
    target = create_model(name)
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


def test_converter_refuses_an_openai_file_for_a_gelu_model(saved, tmp_path,
                                                           capsys):
    _, files = saved
    out = tmp_path / 'out.safetensors'
    assert _convert(files['openai'], out, '--model-name', TINY) == 1
    err = capsys.readouterr().err
    assert str(files['openai']) in err and 'OpenAI CLIP layout' in err
    assert 'quick_gelu' in err and '--model-name' in err
    assert not out.exists()


def test_converted_openai_file_keeps_its_activation(saved, tiny_quickgelu,
                                                    tmp_path):
    """The conversion drops OpenAI's metadata tensors; the header records
    what they said, so the converted file is refused where the original
    is, and loads where the original loads."""
    from safetensors import safe_open
    model, files = saved
    out = tmp_path / 'converted.safetensors'
    assert _convert(files['openai'], out) == 0
    with safe_open(str(out), framework='pt') as f:
        assert f.metadata()['activation'] == 'quick_gelu'
    assert not is_openai_state_dict(safe_load(out))
    with pytest.raises(ActivationMismatchError,
                       match=r"converted\.safetensors: a converted file "
                       r"recording quick_gelu .*configured with gelu"):
        load_open_clip_weights(create_model(TINY), out)
    target = create_model(tiny_quickgelu)
    load_open_clip_weights(target, out)
    torch.testing.assert_close(target.visual.proj, model.visual.proj,
                               rtol=0, atol=1e-3)
    # an open_clip file says nothing and records nothing
    plain = tmp_path / 'plain.safetensors'
    assert _convert(files['bin'], plain) == 0
    with safe_open(str(plain), framework='pt') as f:
        assert 'activation' not in f.metadata()
    load_open_clip_weights(create_model(TINY), plain)
