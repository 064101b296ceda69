"""Offline open_clip factory: shipped configs, BiomedCLIP, tokenizers."""
import json

import open_clip
import pytest
import torch

from plugins.models import (BIOMEDCLIP_MODEL_NAME, BIOMEDCLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME,
                            HF_CONFIG_DIR, MODEL_CONFIG_DIR, build_biomedclip,
                            build_open_clip, create_model, get_model_config,
                            list_shipped_models)
from plugins.models.testing import save_clip_checkpoint
from plugins.models.tokenizer import LocalBertTokenizer

TINY_OPEN_CLIP = OPEN_CLIP_TINY_MODEL_NAME


def test_shipped_configs_are_registered_with_open_clip():
    shipped = list_shipped_models()
    assert {BIOMEDCLIP_MODEL_NAME, BIOMEDCLIP_TINY_MODEL_NAME,
            TINY_OPEN_CLIP} <= set(shipped)
    assert set(shipped) <= set(open_clip.list_models())
    for path in MODEL_CONFIG_DIR.glob('*.json'):
        cfg = json.loads(path.read_text())
        assert {'embed_dim', 'vision_cfg', 'text_cfg'} <= set(cfg), path.name


def test_text_tower_resolves_to_a_shipped_local_folder():
    cfg = get_model_config(BIOMEDCLIP_MODEL_NAME)
    folder = cfg['text_cfg']['hf_model_name']
    assert folder == str(HF_CONFIG_DIR / 'BiomedBERT-base-uncased-abstract')
    bert = json.loads((HF_CONFIG_DIR / folder / 'config.json').read_text())
    assert (bert['hidden_size'], bert['num_hidden_layers'],
            bert['vocab_size']) == (768, 12, 30522)
    assert cfg['text_cfg']['hf_model_pretrained'] is False


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(KeyError, match='ViT-B-16'):
        get_model_config('ViT-B-61')


def test_biomedclip_architecture():
    """The real BiomedCLIP layout, built on the meta device (no weights)."""
    model = create_model(BIOMEDCLIP_MODEL_NAME, device='meta')
    assert type(model).__name__ == 'CustomTextCLIP'
    trunk = model.visual.trunk
    assert (trunk.embed_dim, len(trunk.blocks)) == (768, 12)
    assert trunk.patch_embed.patch_size == (16, 16)
    assert trunk.pos_embed.shape == (1, 197, 768)
    assert model.visual.head.proj.weight.shape == (512, 768)
    proj = model.text.proj
    assert [type(m).__name__ for m in proj] == ['Linear', 'GELU', 'Linear']
    assert (proj[0].in_features, proj[0].out_features,
            proj[2].out_features) == (768, 640, 512)
    assert type(model.text.pooler).__name__ == 'ClsLastHiddenStatePooler'
    assert model.text.transformer.config.vocab_size == 30522
    assert model.text.output_dim == 512
    assert get_model_config(
        BIOMEDCLIP_MODEL_NAME)['text_cfg']['context_length'] == 256


def test_build_open_clip_random_and_tokenizer():
    model, preprocess, tokenizer = build_open_clip(TINY_OPEN_CLIP)
    assert not model.training
    assert tokenizer(['a photo of a cat']).shape == (1, 77)
    from PIL import Image
    image = preprocess(Image.new('RGB', (300, 200), (128, 0, 0)))
    assert image.shape == (3, 224, 224)
    with torch.no_grad():
        feats = model.encode_image(image[None])
    assert feats.shape == (1, 32)


def test_local_bert_tokenizer_special_ids():
    tok = LocalBertTokenizer(HF_CONFIG_DIR / 'BiomedBERT-tiny-test')
    ids = tok(['Prostate', 'a photo of background'])
    assert ids.shape == (2, 256) and ids.dtype == torch.long
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == (2, 3, 0)
    assert ids[0, :3].tolist() == [
        2, tok.tokenizer.convert_tokens_to_ids('prostate'), 3
    ]
    assert ids[0, 3:].eq(0).all()
    with pytest.raises(FileNotFoundError, match='vocab.txt'):
        LocalBertTokenizer(MODEL_CONFIG_DIR)


def test_build_biomedclip_random_then_from_folder(tmp_path):
    torch.manual_seed(0)
    model, preprocess, tok = build_biomedclip(
        None, model_name=BIOMEDCLIP_TINY_MODEL_NAME)
    text = tok(['prostate', 'background'])
    assert text.shape == (2, 256)
    with torch.no_grad():
        ref_text = model.encode_text(text)
        ref_image = model.encode_image(
            torch.rand(
                1, 3, 160, 160, generator=torch.Generator().manual_seed(0)))
    assert ref_text.shape == (2, 32)

    # a folder laid out like the downloaded BiomedCLIP one
    save_clip_checkpoint(model, tmp_path, 'bin')
    (tmp_path / 'vocab.txt').write_text(
        (HF_CONFIG_DIR / 'BiomedBERT-tiny-test' / 'vocab.txt').read_text())
    loaded, _, tok2 = build_biomedclip(
        tmp_path, model_name=BIOMEDCLIP_TINY_MODEL_NAME)
    assert tok2.vocab_file == tmp_path / 'vocab.txt'
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_text(tok2(['prostate', 'background'])), ref_text)
        torch.testing.assert_close(
            loaded.encode_image(
                torch.rand(
                    1, 3, 160, 160,
                    generator=torch.Generator().manual_seed(0))), ref_image)


def test_build_biomedclip_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='no weights file'):
        build_biomedclip(tmp_path, model_name=BIOMEDCLIP_TINY_MODEL_NAME)


def test_normalization_stats_follow_open_clip_releases():
    from plugins.models import normalization_stats
    openai = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258,
                                                    0.27577711))
    assert normalization_stats('ViT-B-32') == openai
    assert normalization_stats(BIOMEDCLIP_MODEL_NAME) == openai
    assert normalization_stats('ViT-B-16-SigLIP') == ((0.5, ) * 3, (0.5, ) * 3)
    # ViT-L-14's releases disagree: OpenAI's unless the release is named
    assert normalization_stats('ViT-L-14') == openai
    assert normalization_stats('ViT-L-14', 'laion2b_s32b_b82k') == \
        ((0.5, ) * 3, (0.5, ) * 3)
    with pytest.raises(KeyError, match='no pretrained tag'):
        normalization_stats('ViT-B-32', 'nope')
    model = create_model('ViT-B-16-SigLIP', device='meta')
    assert tuple(model.visual.preprocess_cfg['mean']) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize('name', [TINY_OPEN_CLIP, BIOMEDCLIP_TINY_MODEL_NAME])
def test_vision_only_keeps_the_image_tower(name):
    full = create_model(name, device='meta')
    stub = create_model(name, device='meta', vision_only=True)
    assert {k: v.shape for k, v in stub.visual.state_dict().items()} == \
        {k: v.shape for k, v in full.visual.state_dict().items()}
    n_text = sum(p.numel() for n, p in stub.named_parameters()
                 if not n.startswith('visual.'))
    assert n_text < sum(p.numel() for n, p in full.named_parameters()
                        if not n.startswith('visual.'))


@pytest.mark.parametrize('name', list_shipped_models())
def test_every_shipped_config_builds_offline(name):
    """Shapes only (meta device): every shipped config, no network."""
    model = create_model(name, device='meta')
    assert hasattr(model, 'visual')
