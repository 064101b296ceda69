"""build_clip_model: the builder follows the config's content, not its name."""
import logging

import pytest
import torch

from plugins.models import (BIOMEDCLIP_TINY_MODEL_NAME,
                            CONCEPT_CLIP_TINY_MODEL_NAME,
                            OPEN_CLIP_TINY_MODEL_NAME, build_clip_model,
                            create_model, get_model_config,
                            has_bert_text_tower)
from plugins.models.concept_clip import ConceptCLIP


def test_concept_section_builds_concept_clip_whatever_the_name(config_copy):
    path = config_copy(CONCEPT_CLIP_TINY_MODEL_NAME, 'MedVision-Tiny-1')
    # by registered name and by JSON file
    for source in (path.stem, path):
        model, preprocess, tokenizer = build_clip_model(source)
        assert isinstance(model, ConceptCLIP)
        assert model.model_name == 'MedVision-Tiny-1'
        assert not model.training
        assert tokenizer(['a cell']).shape == (1, 32)  # the config's length
        with torch.no_grad():
            out = model(torch.rand(1, 3, 112, 112), tokenizer(['a cell']))
        assert out['image_token_features'].shape == (1, 64, 64)


def test_same_towers_without_the_section_build_open_clip(config_copy):
    """The concept heads come from the section, not from the towers or the
    name: without it, the same towers are open_clip's CustomTextCLIP."""
    name = config_copy(CONCEPT_CLIP_TINY_MODEL_NAME, 'ConceptCLIP-NoHeads',
                       drop=['concept_cfg']).stem
    model, _, _ = build_clip_model(name)
    assert type(model).__name__ == 'CustomTextCLIP'
    assert not hasattr(model, 'image_proj')


def test_bert_tower_falls_back_to_test_vocab_whatever_the_name(
        config_copy, bert_without_vocab, caplog):
    name = config_copy(BIOMEDCLIP_TINY_MODEL_NAME, 'PathologyCLIP-Tiny',
                       updates=bert_without_vocab).stem
    assert has_bert_text_tower(get_model_config(name))
    with caplog.at_level(logging.WARNING, logger='plugins.models'):
        model, _, tokenizer = build_clip_model(name)
    assert type(model).__name__ == 'CustomTextCLIP'
    assert 'tiny test vocabulary' in caplog.text and name in caplog.text
    ids = tokenizer(['a cell'])
    assert ids.shape == (1, 256) and ids[0, 0] == 2  # [CLS] of PubMedBERT


def test_open_clip_text_tower_keeps_its_own_tokenizer(caplog):
    assert not has_bert_text_tower(get_model_config(OPEN_CLIP_TINY_MODEL_NAME))
    with caplog.at_level(logging.WARNING, logger='plugins.models'):
        model, _, tokenizer = build_clip_model(OPEN_CLIP_TINY_MODEL_NAME)
    assert type(model).__name__ == 'CLIP'
    assert 'tiny test vocabulary' not in caplog.text
    assert tokenizer(['a cat']).shape == (1, 77)


def test_unknown_name_lists_the_shipped_configs():
    with pytest.raises(KeyError, match='shipped here') as err:
        build_clip_model('MedVision-Huge-99')
    assert CONCEPT_CLIP_TINY_MODEL_NAME in str(err.value)
    assert BIOMEDCLIP_TINY_MODEL_NAME in str(err.value)


def test_pretrained_tag_does_not_apply_to_concept_clip():
    with pytest.raises(ValueError, match='concept_cfg.*laion'):
        build_clip_model(CONCEPT_CLIP_TINY_MODEL_NAME,
                         pretrained_tag='laion2b_s34b_b79k')


def test_open_clip_builds_the_config_and_the_section_stays():
    """open_clip's model classes reject unknown keys; create_model hides the
    section while open_clip builds and the registry keeps it."""
    model = create_model(CONCEPT_CLIP_TINY_MODEL_NAME, device='meta')
    assert type(model).__name__ == 'CustomTextCLIP'
    assert get_model_config(CONCEPT_CLIP_TINY_MODEL_NAME)['concept_cfg'] == \
        dict(proj_type='mlp', init_logit_bias=-10)


def test_concept_section_sets_the_concept_heads(config_copy):
    import json
    path = config_copy(CONCEPT_CLIP_TINY_MODEL_NAME, 'MedVision-Tiny-2')
    cfg = json.loads(path.read_text())
    cfg['concept_cfg'] = dict(proj_type='mlp', init_logit_bias=-3.5)
    path.write_text(json.dumps(cfg))
    model = ConceptCLIP(str(path))
    assert model.concept_logit_bias.item() == -3.5
    assert model.logit_bias.item() == -10.0
    cfg['concept_cfg'] = dict(proj_type='linear')
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="proj_type 'linear'"):
        ConceptCLIP(str(path))
