import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.scoring import (RECORD_FIELDS, RegionScorer, head_type,
                             load_prompts)

BOXES = [[0, 0, 32, 24], [10, 5, 60, 47], [30, 20, 31, 21], [0, 0, 64, 48]]


def masks_for(image):
    m = np.zeros(image.shape[:2], bool)
    m[8:20, 12:40] = True
    return [m, None, m, m]


def count_encode_text(model):
    calls = []
    original = model.encode_text

    def wrapped(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.encode_text = wrapped
    return calls


@pytest.mark.parametrize('strategy', ['gray', 'raw', 'soft'])
def test_batched_equals_one_at_a_time(tiny_clip, image, strategy):
    model, preprocess, tokenizer = tiny_clip
    kw = dict(positive_prompts=['a cat', 'a dog'],
              negative_prompts=['sky', 'a texture', 'background'],
              strategy=strategy)
    batched = RegionScorer(model, tokenizer, preprocess, batch_size=3, **kw)
    single = RegionScorer(model, tokenizer, preprocess, batch_size=1, **kw)
    masks = masks_for(image)
    ref = batched.score(image, BOXES, masks)
    one = [single.score(image, [b], [m])[0] for b, m in zip(BOXES, masks)]
    assert len(ref) == len(BOXES)
    for a, b in zip(ref, one):
        assert set(a) == set(RECORD_FIELDS)
        for key in ('s_pos', 's_neg', 'p_pos_sum', 'p_neg_sum'):
            assert abs(a[key] - b[key]) < 1e-5, key
        assert a['s_pos_text'] == b['s_pos_text']
        assert a['semantic_multiplier'] == b['semantic_multiplier']
    # softmax head: probabilities over all prompts sum to one
    assert batched.head == 'softmax'
    for r in ref:
        assert abs(r['p_pos_sum'] + r['p_neg_sum'] - 1) < 1e-5


def test_text_features_once_per_prompt_set(tiny_clip, image):
    model, preprocess, tokenizer = tiny_clip
    calls = count_encode_text(model)
    try:
        scorer = RegionScorer(model, tokenizer, preprocess, ['a cat'],
                              ['sky', 'grass'])
        for _ in range(3):
            scorer.score(image, BOXES[:2])
        assert len(calls) == 1
        scorer.set_prompts(['a dog'], ['sky'])
        scorer.score(image, BOXES[:1])
        scorer.score(image, BOXES[:1])
        assert len(calls) == 2
        scorer.set_prompts(['a cat'], ['sky', 'grass'])  # cached
        scorer.score(image, BOXES[:1])
        assert len(calls) == 2
    finally:
        del model.encode_text  # back to the class method


def test_empty_regions(tiny_clip, image):
    model, preprocess, tokenizer = tiny_clip
    scorer = RegionScorer(model, tokenizer, preprocess, ['a'], ['b'])
    assert scorer.score(image, []) == []


class SigmoidStub(nn.Module):
    """SigLIP/ConceptCLIP-like: tuple outputs, log logit_scale, logit_bias."""

    def __init__(self, dim=8):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Linear(3, dim)
        self.txt = nn.Embedding(100, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))

    def encode_image(self, x):
        feats = self.img(x.mean(dim=(2, 3)))
        return feats, feats[:, None]  # (cls, tokens)

    def encode_text(self, tokens):
        feats = self.txt(tokens).mean(1)
        return feats, feats[:, None]


def stub_tokenizer(texts):
    return {'input_ids': torch.tensor([[len(t) % 100, 1] for t in texts])}


def stub_preprocess(pil):
    return torch.from_numpy(np.asarray(pil.resize(
        (8, 8)), np.float32)).permute(2, 0, 1) / 255


def test_model_with_logit_bias_uses_sigmoid_head(image):
    model = SigmoidStub()
    assert head_type(model) == 'sigmoid'
    scorer = RegionScorer(model, stub_tokenizer, stub_preprocess,
                          ['a cat', 'a big dog'], ['sky', 'a texture'])
    assert scorer.head == 'sigmoid'
    crops = scorer.prepare_crops(image, BOXES)
    img = F.normalize(scorer.encode_crops(crops), dim=-1)
    with torch.no_grad():
        txt = F.normalize(model.encode_text(
            stub_tokenizer(['a cat', 'a big dog', 'sky',
                            'a texture'])['input_ids'])[0],
                          dim=-1)
        expected = torch.sigmoid(10.0 * img @ txt.T - 2.0)
    probs = scorer.probs(img)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    # not a softmax: rows do not sum to one
    assert (probs.sum(1) - 1).abs().max() > 1e-3
    records = scorer.score(image, BOXES)
    for rec, p in zip(records, expected.double()):
        assert rec['p_pos_sum'] == pytest.approx(float(1 - (1 - p[:2]).prod()),
                                                 abs=1e-6)
        assert rec['p_neg_sum'] == pytest.approx(float(1 - (1 - p[2:]).prod()),
                                                 abs=1e-6)
        assert rec['s_pos'] == pytest.approx(float(p[:2].max()), abs=1e-6)


def test_prompt_loading(tmp_path):
    assert len(load_prompts('coco80')) == 80
    neg = load_prompts('background')
    assert 'sky' in neg and 'a fragment' in neg
    f = tmp_path / 'p.txt'
    f.write_text('# mine\na cat\n\n a dog \n')
    assert load_prompts(f) == ['a cat', 'a dog']
    assert load_prompts(str(f)) == ['a cat', 'a dog']
    assert load_prompts('a cat, a dog') == ['a cat', 'a dog']
    assert load_prompts(['x', ' ', 'y']) == ['x', 'y']
    with pytest.raises(ValueError, match='no prompts'):
        load_prompts([])


def test_concept_clip_uses_sigmoid_head(image):
    """The tiny ConceptCLIP (log-space logit_scale, logit_bias, tuple
    outputs) scores with the sigmoid head, as its own get-logits does."""
    from plugins.scoring import build_region_scorer
    torch.manual_seed(0)
    scorer = build_region_scorer('ConceptCLIP-Tiny-test',
                                 positive_prompts=['a tumor', 'a cell'],
                                 negative_prompts=['background'])
    assert scorer.head == 'sigmoid'
    model = scorer.model
    crops = scorer.prepare_crops(image, BOXES[:2])
    img = scorer.encode_crops(crops)
    with torch.no_grad():
        ids = scorer.tokenizer(['a tumor', 'a cell', 'background'])
        txt = model.encode_text(ids, normalize=True)[0]
        expected = torch.sigmoid(model.logit_scale.exp() * img @ txt.T +
                                 model.logit_bias)
    torch.testing.assert_close(scorer.probs(img), expected)
    records = scorer.score(image, BOXES[:2])
    assert set(records[0]) == set(RECORD_FIELDS)


def test_builder_follows_the_config_not_the_name(config_copy):
    """A ConceptCLIP config under another name still gets ConceptCLIP (and
    its concept heads), chosen by its ``concept_cfg`` section."""
    from plugins.models.concept_clip import ConceptCLIP
    from plugins.scoring import build_region_scorer
    from plugins.models import CONCEPT_CLIP_TINY_MODEL_NAME
    name = config_copy(CONCEPT_CLIP_TINY_MODEL_NAME, 'DermVision-Tiny').stem
    scorer = build_region_scorer(name,
                                 positive_prompts=['a mole'],
                                 negative_prompts=['skin'])
    assert isinstance(scorer.model, ConceptCLIP)
    assert scorer.head == 'sigmoid'
