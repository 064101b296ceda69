"""ConceptCLIP (host-free): upstream's layout (key/shape lists in
tests/data), encoders, scoring interface, HF folders loaded by key."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from plugins.models import HF_CONFIG_DIR, create_model
from plugins.models.concept_clip import (CONCEPT_CLIP_MODEL_NAME,
                                         CONCEPT_CLIP_TINY_MODEL_NAME,
                                         ConceptCLIP,
                                         build_concept_clip,
                                         load_concept_clip_weights)
from plugins.utils import (StateDictMismatchError, key_mismatch,
                           save_safetensors)

_spec = importlib.util.spec_from_file_location(
    'conceptclip_folder',
    Path(__file__).resolve().parents[1] / 'data' / 'conceptclip_folder.py')
folders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(folders)

TINY = CONCEPT_CLIP_TINY_MODEL_NAME
SIGLIP = 'ViT-SO400M-14-SigLIP-384'
TINY_VOCAB = HF_CONFIG_DIR / 'BiomedBERT-tiny-test' / 'vocab.txt'


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids():
    # [CLS] tokens [SEP] [PAD]... with the tiny vocabulary's special ids
    return torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 3, 0, 0, 0]])


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return ConceptCLIP(TINY).eval()


@pytest.fixture(scope='module')
def hf_folder(tiny, tmp_path_factory):
    """The tiny model saved like an HF export: model.safetensors +
    vocab.txt."""
    folder = tmp_path_factory.mktemp('ConceptCLIP')
    save_safetensors(tiny.state_dict(), folder / 'model.safetensors')
    shutil.copy(TINY_VOCAB, folder / 'vocab.txt')
    return folder


def _meta_state(layout):
    return {
        k: torch.empty(shape, device='meta')
        for k, shape in layout['keys'].items()
    }


def test_full_size_layout_is_upstreams_key_for_key():
    """The real ConceptCLIP (SO400M + PubMedBERT + concept heads), built on
    the meta device, has exactly the keys and shapes of the released
    layout written down in tests/data: 0 missing, 0 unexpected, 0
    mis-shaped; and the user-facing loader takes that layout strictly."""
    layout = folders.load_layout(folders.FULL)
    model = ConceptCLIP('ConceptCLIP', device='meta')  # alias of the default
    assert model.model_name == CONCEPT_CLIP_MODEL_NAME
    mine = model.state_dict()
    missing, unexpected, mismatched = key_mismatch(mine, _meta_state(layout))
    assert (missing, unexpected, mismatched) == ([], [], [])
    counts = {
        part: sum(k.startswith(part) for k in layout['keys'])
        for part in ('visual.trunk.', 'text.transformer.')
    }
    assert counts == {'visual.trunk.': 342, 'text.transformer.': 197}
    # the heads as upstream builds them (bias-free, GELU between)
    assert [type(m).__name__ for m in model.image_proj] == \
        ['Linear', 'GELU', 'Linear']
    assert [type(m).__name__ for m in model.text_proj] == \
        ['Linear', 'GELU', 'Linear']
    assert model.image_proj[1].approximate == 'none'
    assert all(m.bias is None for m in (*model.image_proj[::2],
                                        *model.text_proj[::2], model.text.proj))
    assert type(model.text.proj).__name__ == 'Linear'
    assert type(model.text.pooler).__name__ == 'MeanPooler'
    assert model.context_length == 77
    # the loader's path (wrapper prefix stripped, scalars reshaped) on it
    wrapped = {'model.' + k: v for k, v in _meta_state(layout).items()}
    wrapped['model.logit_scale'] = torch.empty(1, device='meta')  # (1,)
    loaded = load_concept_clip_weights(model, wrapped)
    assert loaded.keys() == mine.keys()


def test_full_size_trunk_is_open_clips_siglip_so400m():
    """Same image tower as open_clip's ViT-SO400M-14-SigLIP-384 (every key
    and shape), on the meta device."""
    ours = ConceptCLIP(CONCEPT_CLIP_MODEL_NAME, device='meta')
    ref = create_model(SIGLIP, device='meta', vision_only=True).visual
    mine = ours.visual.state_dict()
    theirs = ref.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    trunk = ours.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.num_prefix_tokens,
            tuple(trunk.patch_embed.patch_size)) == (1152, 27, 0, (14, 14))
    assert tuple(trunk.patch_embed.grid_size) == (27, 27)  # 729 tokens
    assert ours.image_size == (384, 384)
    assert ours.image_proj[2].out_features == 1152
    assert ours.text.config.hidden_size == 768
    assert ours.mean == ours.std == (0.5, 0.5, 0.5)
    for name in ('logit_scale', 'logit_bias', 'concept_logit_scale',
                 'concept_logit_bias'):
        assert getattr(ours, name).shape == ()


def test_tiny_layout_file_matches_the_tiny_config():
    layout = folders.load_layout(folders.TINY)
    mine = ConceptCLIP(TINY, device='meta').state_dict()
    assert key_mismatch(mine, _meta_state(layout)) == ([], [], [])


# ----------------------------------------------------------------------
# A tiny folder in the released layout, recomputed with timm/transformers
# ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def real_layout():
    layout = folders.load_layout(folders.TINY)
    return layout, folders.random_state(layout, seed=1)


@pytest.mark.parametrize('variant', ['single', 'sharded', 'wrapped'])
def test_real_layout_folder_logits_equal_an_independent_computation(
        real_layout, tmp_path, variant):
    layout, state = real_layout
    folder = folders.write_folder(
        tmp_path / 'ConceptCLIP',
        layout,
        state,
        sharded=variant == 'sharded',
        prefix='model.' if variant == 'wrapped' else '',
        vocab=TINY_VOCAB)
    model, _, tokenizer = build_concept_clip(folder, config=TINY)
    pixels = _randn(3, 3, 112, 112, seed=2)
    ids = tokenizer(['a cell', 'a tumor in the lung', 'x'])
    assert ids.shape == (3, 32)
    ref = folders.reference_outputs(layout, state, pixels, ids)
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=ids)
    logits = out['logit_scale'] * out['image_features'] @ \
        out['text_features'].T + out['logit_bias']
    torch.testing.assert_close(logits, ref['logits'], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        model.logits(out['image_features'], out['text_features']),
        ref['logits'], rtol=0, atol=1e-5)
    for key in ('image_features', 'text_features', 'image_token_features',
                'text_token_features'):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-5)
    assert out['logit_bias'].item() == pytest.approx(-3.25)
    assert out['concept_logit_scale'].item() == pytest.approx(7.0)
    assert out['concept_logit_bias'].item() == pytest.approx(-1.5)
    assert ref['logits'].std() > 0.01  # not a constant


def test_padding_does_not_change_the_text_embedding(tiny):
    """Mean pooling uses the attention mask: extra [PAD]s change nothing."""
    ids = _ids()
    longer = torch.cat([ids, torch.zeros(2, 5, dtype=ids.dtype)], 1)
    with torch.no_grad():
        a, _ = tiny.encode_text(ids)
        b, _ = tiny.encode_text(longer)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_folder_config_json_is_read_and_checked(real_layout, tmp_path):
    layout, state = real_layout
    folder = folders.write_folder(tmp_path / 'c', layout, state)
    cfg = json.loads((folder / 'config.json').read_text())
    cfg['text_cfg'].update(context_length=256, hf_proj_type='mlp')
    (folder / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as info:
        build_concept_clip(folder, config=TINY)
    msg = str(info.value)
    assert str(folder / 'config.json') in msg
    assert "text_cfg.context_length = 256 there, 32 here" in msg
    assert "text_cfg.hf_proj_type = 'mlp' there, 'linear' here" in msg
    # the open_clip config nested in an HF config is found too
    nested = dict(layout['hf_config'], model_cfg=cfg)
    (folder / 'config.json').write_text(json.dumps(nested))
    with pytest.raises(ValueError, match='text_cfg.context_length = 256'):
        build_concept_clip(folder, config=TINY)
    # HF bookkeeping only (no open_clip fields) or no config.json: fine
    (folder / 'config.json').write_text(json.dumps(layout['hf_config']))
    build_concept_clip(folder, config=TINY)
    (folder / 'config.json').unlink()
    build_concept_clip(folder, config=TINY)


def test_missing_folder_fails_before_building(tmp_path, monkeypatch):
    import plugins.models.concept_clip as cc

    def never(*args, **kwargs):
        raise AssertionError('the model was built before the path check')

    monkeypatch.setattr(cc, 'ConceptCLIP', never)
    missing = tmp_path / 'no' / 'ConceptCLIP'
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        cc.build_concept_clip(missing)
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        cc.build_concept_clip(tmp_path)  # exists, holds no weights


def test_tiny_image_encoder_equals_open_clip_and_timm_forward(tiny):
    """Numerical parity on the tiny SigLIP-layout trunk: the pooled
    embedding is open_clip's TimmModel forward, the tokens are timm's
    final-norm tokens."""
    ref = create_model(TINY, vision_only=True).visual.eval()
    ref.load_state_dict(tiny.visual.state_dict())
    x = _randn(2, 3, 112, 112)
    with torch.no_grad():
        img, tokens = tiny.encode_image(x, normalize=False)
        torch.testing.assert_close(img, ref(x), rtol=0, atol=1e-5)
        last = ref.trunk.forward_intermediates(
            x,
            indices=[3],
            norm=True,
            output_fmt='NLC',
            intermediates_only=True)[-1]
        torch.testing.assert_close(tokens, last, rtol=0, atol=1e-5)
        img_n, _ = tiny.encode_image(x)
    assert img.shape == (2, 64) and tokens.shape == (2, 64, 64)  # 8 x 8
    torch.testing.assert_close(img_n, torch.nn.functional.normalize(img))


def test_text_encoder_equals_open_clips_hf_text_tower(tiny):
    with torch.no_grad():
        txt, tokens = tiny.encode_text(_ids(), normalize=False)
        torch.testing.assert_close(txt, tiny.text(_ids()))
    assert txt.shape == (2, 64) and tokens.shape == (2, 6, 64)


def test_forward_dict_and_sigmoid_logits(tiny):
    x = _randn(2, 3, 112, 112)
    with torch.no_grad():
        out = tiny(pixel_values=x, input_ids=_ids())
        img, tok = tiny.encode_image(x)
        torch.testing.assert_close(out['image_token_features'],
                                   tiny.image_proj(tok))
        logits = tiny.logits(out['image_features'], out['text_features'])
    assert {
        k: tuple(v.shape)
        for k, v in out.items()
    } == {
        'image_features': (2, 64),
        'image_token_features': (2, 64, 64),
        'text_features': (2, 64),
        'text_token_features': (2, 6, 64),
        'logit_scale': (),
        'logit_bias': (),
        'concept_logit_scale': (),
        'concept_logit_bias': ()
    }
    # the HF output convention: exp'd scale, logits = scale * i @ t.T + bias
    torch.testing.assert_close(
        logits,
        out['logit_scale'] * out['image_features'] @ out['text_features'].T +
        out['logit_bias'])
    assert out['logit_bias'] == -10


def test_preprocess_tensor_takes_unit_range_images(tiny):
    x = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(tiny.preprocess_tensor(x), x * 2 - 1)
    big = tiny.preprocess_tensor(torch.rand(3, 300, 200))
    assert big.shape == (1, 3, 112, 112)
    assert big.min() >= -1 and big.max() <= 1
    with pytest.raises(ValueError, match='in \\[0, 1\\]'):
        tiny.preprocess_tensor(torch.rand(2, 1, 10, 10))


def test_build_from_hf_folder_round_trip(tiny, hf_folder):
    model, preprocess, tokenizer = build_concept_clip(
        str(hf_folder), config=TINY)
    state = model.state_dict()
    assert state.keys() == tiny.state_dict().keys()
    for k, v in tiny.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert not model.training
    assert tokenizer.vocab_file == hf_folder / 'vocab.txt'
    ids = tokenizer(['a cell photo'])
    assert ids.shape == (1, 32) and ids[0, 0] == 2
    from PIL import Image
    pixels = preprocess(Image.new('RGB', (50, 30), (255, 0, 0)))
    assert pixels.shape == (3, 112, 112)
    torch.testing.assert_close(pixels[0], torch.ones(112, 112))


@pytest.mark.parametrize('layout', ['wrapped', 'sharded', 'bin', 'extras'])
def test_other_export_layouts_load_every_key(tiny, tmp_path, layout):
    state = tiny.state_dict()
    if layout == 'wrapped':  # an HF model holding the CLIP as `model`
        save_safetensors({
            'model.' + k: v
            for k, v in state.items()
        }, tmp_path / 'model.safetensors')
    elif layout == 'sharded':
        keys = sorted(state)
        shards = {
            'model-00001-of-00002.safetensors': keys[::2],
            'model-00002-of-00002.safetensors': keys[1::2]
        }
        for name, part in shards.items():
            save_safetensors({k: state[k] for k in part}, tmp_path / name)
        index = {k: n for n, part in shards.items() for k in part}
        (tmp_path / 'model.safetensors.index.json').write_text(
            json.dumps({
                'metadata': {},
                'weight_map': index
            }))
    elif layout == 'bin':
        torch.save(state, tmp_path / 'pytorch_model.bin')
    else:  # older transformers: position_ids, scalars saved as (1,)
        extra = dict(state)
        extra['text.transformer.embeddings.position_ids'] = \
            torch.arange(512)[None]
        extra['logit_scale'] = state['logit_scale'].reshape(1)
        save_safetensors(extra, tmp_path / 'model.safetensors')
    model = ConceptCLIP(TINY)
    loaded = load_concept_clip_weights(model, tmp_path)
    assert loaded.keys() == state.keys()
    torch.testing.assert_close(model.image_proj[0].weight, tiny.image_proj[0].weight)


def test_malformed_shard_index_names_the_file(tiny, tmp_path):
    from plugins.models.concept_clip_weights import read_concept_clip_weights
    from plugins.utils import CheckpointError
    index = tmp_path / 'model.safetensors.index.json'
    # what a hand-edited index looks like: an unquoted key
    index.write_text('{"metadata": {}, "weight_map": {logit_scale: "a"}}')
    with pytest.raises(CheckpointError) as info:
        load_concept_clip_weights(ConceptCLIP(TINY), tmp_path)
    assert f'{index}: not valid JSON (Expecting property name' in \
        str(info.value)
    index.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match='has no "weight_map" key'):
        read_concept_clip_weights(tmp_path)


def test_wrong_layout_lists_keys_and_key_rules_fix_it(tiny, tmp_path):
    renamed = {
        k.replace('visual.trunk.', 'vision_model.'): v
        for k, v in tiny.state_dict().items()
    }
    save_safetensors(renamed, tmp_path / 'model.safetensors')
    with pytest.raises(StateDictMismatchError) as info:
        build_concept_clip(str(tmp_path), config=TINY)
    msg = str(info.value)
    assert 'missing keys: [visual.trunk.' in msg
    assert 'unexpected keys: [vision_model.' in msg
    assert 'key_rules' in msg
    model, _, _ = build_concept_clip(
        str(tmp_path),
        config=TINY,
        key_rules=[(r'^vision_model\.', 'visual.trunk.')])
    torch.testing.assert_close(model.visual.trunk.pos_embed,
                               tiny.visual.trunk.pos_embed)


def test_missing_folder_and_random_build(tmp_path):
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        build_concept_clip(str(tmp_path), config=TINY)
    model, _, tokenizer = build_concept_clip(None, config=TINY)
    assert tokenizer is not None  # shipped tiny vocabulary


def test_json_config_path(tmp_path):
    from plugins.models import MODEL_CONFIG_DIR
    cfg = json.loads((MODEL_CONFIG_DIR / f'{TINY}.json').read_text())
    cfg['embed_dim'] = 48
    path = tmp_path / 'ConceptCLIP-Custom-test.json'
    path.write_text(json.dumps(cfg))
    model = ConceptCLIP(str(path), vision_only=True)
    assert model.model_name == 'ConceptCLIP-Custom-test'
    assert model.image_proj[2].out_features == 48


def test_rejects_non_siglip_configs():
    with pytest.raises(TypeError, match='timm ViT'):
        ConceptCLIP('ViT-Tiny-16-test')
