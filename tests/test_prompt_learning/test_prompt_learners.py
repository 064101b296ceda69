"""Prompt learners on both open_clip tower kinds (tiny random models)."""
import math

import pytest
import torch

from plugins.prompt_learning import (CONTEXT_TOKEN_ID, TextPromptLearner,
                                     VisualPromptLearner, VPTTPTSegmentor)

CLASSES = ['circle', 'square', 'background']


def reprompt(seg, **kwargs):
    """A new segmentor sharing ``seg``'s frozen CLIP, with fresh prompts."""
    return VPTTPTSegmentor(clip_model=seg.clip_model, tokenizer=seg.tokenizer,
                           **kwargs)


def test_visual_prompt_shapes_and_init():
    deep = VisualPromptLearner(num_layers=12, num_prompts=4, width=768)
    assert deep.prompts.shape == (12, 4, 768)
    bound = math.sqrt(6 / (3 * 16 * 16 + 768))
    assert deep.prompts.abs().max() <= bound
    shallow = VisualPromptLearner(12, 4, 768, deep=False)
    assert shallow.prompts.shape == (1, 4, 768)
    with pytest.raises(ValueError, match='num_prompts'):
        VisualPromptLearner(12, -1, 768)


@torch.no_grad()
def test_deep_prompts_replace_previous_block_outputs(tiny_segmentor):
    """Block i sees block i's prompts, not what block i-1 made of its own."""
    seg = reprompt(tiny_segmentor)
    tower = seg.visual_tower
    pixels = seg.preprocess(torch.rand(1, 3, 64, 64))
    ref = seg.encode_image_tokens(pixels)
    num_tokens = tower.embed(pixels).shape[1]
    assert ref.shape == (1, num_tokens, tower.width)
    seg.visual_prompt_learner.prompts[-1] += torch.randn_like(
        seg.visual_prompt_learner.prompts[-1])
    assert not torch.allclose(seg.encode_image_tokens(pixels), ref)

    # Reference deep forward written out by hand.
    prompts = seg.visual_prompt_learner.prompts
    x = tower.embed(pixels)
    for i, block in enumerate(tower.blocks):
        x = block(torch.cat([x[:, :num_tokens], prompts[i][None]], 1))
    torch.testing.assert_close(seg.encode_image_tokens(pixels),
                               tower.norm(x[:, :num_tokens]))


@torch.no_grad()
def test_shallow_prompts_travel_through_all_blocks(tiny_segmentor):
    seg = reprompt(tiny_segmentor, deep_visual_prompts=False)
    tower = seg.visual_tower
    pixels = seg.preprocess(torch.rand(1, 3, 64, 64))
    x = tower.embed(pixels)
    n = x.shape[1]
    x = torch.cat([x, seg.visual_prompt_learner.prompts[0][None]], 1)
    for block in tower.blocks:
        x = block(x)
    torch.testing.assert_close(seg.encode_image_tokens(pixels),
                               tower.norm(x[:, :n]))


@torch.no_grad()
def test_open_clip_tower_fidelity_without_prompts(tiny_open_clip):
    """open_clip's own ViT + text transformer (ViT-B-16's classes)."""
    clip = tiny_open_clip.clip_model
    plain = reprompt(tiny_open_clip, num_visual_prompts=0, num_text_prompts=0)
    pixels = plain.preprocess(torch.rand(2, 3, 224, 224))
    clip.visual.output_tokens = True
    try:
        pooled, tokens = clip.visual(pixels)  # encode_image's own path
    finally:
        clip.visual.output_tokens = False
    torch.testing.assert_close(plain.encode_patches(pixels),
                               tokens @ clip.visual.proj, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        plain.visual_tower.pool(plain.encode_image_tokens(pixels)), pooled,
        atol=1e-5, rtol=0)
    torch.testing.assert_close(clip.encode_image(pixels), pooled)
    ids = plain.tokenizer(CLASSES)
    torch.testing.assert_close(plain.encode_text(CLASSES),
                               clip.encode_text(ids), atol=1e-5, rtol=0)


@torch.no_grad()
def test_context_goes_after_the_start_token(tiny_segmentor):
    seg = tiny_segmentor
    ids = seg.tokenize(CLASSES)
    n = seg.num_text_prompts
    embeds, prompt_ids = seg.text_prompt_learner.build_prompts(
        ids, seg.text_tower, seg._start_token_id)
    used = int((ids != seg.text_tower.pad_id).sum(1).max())
    assert prompt_ids.shape == (3, used + n)
    assert embeds.shape == (3, used + n, seg.text_tower.width)
    assert (prompt_ids[:, 0] == ids[:, 0]).all()
    assert (prompt_ids[:, 1:1 + n] == CONTEXT_TOKEN_ID).all()
    torch.testing.assert_close(prompt_ids[:, 1 + n:], ids[:, 1:used])
    context = seg.text_prompt_learner.context
    torch.testing.assert_close(embeds[:, 1:1 + n], context.expand(3, -1, -1))
    if seg.text_tower.kind == 'open_clip':
        # argmax pooling still lands on <end_of_text>, n positions later
        assert (prompt_ids.argmax(1) == ids.argmax(1) + n).all()


def test_bert_tokens_are_cls_name_sep(tiny_biomedclip):
    ids = tiny_biomedclip.tokenize(['prostate'])[0]
    assert tiny_biomedclip.text_tower.kind == 'hf'
    assert ids[0] == 2 and tiny_biomedclip._start_token_id == 2  # [CLS]
    last = int((ids != 0).nonzero().max())
    assert ids[last] == 3  # [SEP]
    assert ids.shape == (256,)


def test_text_errors(tiny_segmentor):
    seg = tiny_segmentor
    tower, learner = seg.text_tower, seg.text_prompt_learner
    ids = seg.tokenize(['circle'])
    with pytest.raises(ValueError, match='start token'):
        learner(ids[:, 1:], tower, start_token_id=seg._start_token_id)
    full = ids.clone()
    full[:, 1:] = ids[0, 1]  # a prompt filling the whole context
    with pytest.raises(ValueError, match='exceeds the context length'):
        learner(full, tower)
    with pytest.raises(ValueError, match='width'):
        TextPromptLearner(4, tower.width + 1)(ids, tower)


@torch.no_grad()
def test_one_text_feature_per_class(tiny_segmentor):
    out = tiny_segmentor(torch.rand(1, 3, 64, 64), CLASSES)
    feats = out['text_features']
    assert feats.shape == (3, out['patch_features'].shape[-1])
    assert not torch.allclose(feats[0], feats[1])


def test_visual_prompts_run_through_the_towers_loop(tiny_segmentor):
    """VPT is a hook of the tower's one block loop: gradient checkpointing
    and windowed attention reach the prompted blocks (issue 22)."""
    from tests.helpers import assert_checkpointing_keeps_gradients
    pixels = tiny_segmentor.preprocess(torch.rand(1, 3, 64, 64))

    def build(cp):
        seg = reprompt(tiny_segmentor)
        torch.manual_seed(0)
        torch.nn.init.normal_(seg.visual_prompt_learner.prompts)
        seg.visual_tower.set_grad_checkpointing(cp)
        return seg

    assert_checkpointing_keeps_gradients(
        build, lambda seg: seg.encode_image_tokens(pixels).square().mean())
    # a window covering the grid is global attention, prompts included
    seg = reprompt(tiny_segmentor)
    with torch.no_grad():
        ref = seg.encode_image_tokens(pixels)
        grid = seg.visual_tower.grid_size
        seg.visual_tower.set_window_attention(max(grid), global_blocks=())
        try:
            torch.testing.assert_close(seg.encode_image_tokens(pixels), ref,
                                       rtol=1e-5, atol=1e-5)
            seg.visual_tower.set_window_attention(2, global_blocks=())
            assert not torch.allclose(seg.encode_image_tokens(pixels), ref)
        finally:
            seg.visual_tower.set_window_attention(None)
