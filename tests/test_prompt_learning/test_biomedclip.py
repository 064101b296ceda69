"""The acceptance numbers on BiomedCLIP's real architecture (random weights).

One BiomedCLIP is built for the whole module (about 8 s, 2 GB on CPU); other
prompt configurations re-use its frozen CLIP.
"""
import pytest
import torch

from plugins.prompt_learning import VPTTPTSegmentor

CLASSES = ['prostate', 'background']


@pytest.fixture(scope='module')
def biomedclip():
    torch.manual_seed(0)
    return VPTTPTSegmentor()  # BiomedCLIP architecture, 4 + 4 prompts


@pytest.fixture(scope='module')
def images():
    return torch.rand(2, 3, 224, 224,
                      generator=torch.Generator().manual_seed(1))


def test_trainable_parameters_are_the_prompts(biomedclip):
    trainable = {n: p.numel() for n, p in biomedclip.named_parameters()
                 if p.requires_grad}
    assert trainable == {'visual_prompt_learner.prompts': 12 * 4 * 768,
                         'text_prompt_learner.context': 4 * 768}
    assert sum(trainable.values()) == 36_864 + 3_072 == 39_936
    assert not any(p.requires_grad for p in biomedclip.clip_model.parameters())
    assert biomedclip.visual_prompt_learner.prompts.shape == (12, 4, 768)
    assert biomedclip.clip_model.text.output_dim == 512


def test_shapes_and_gradients(biomedclip, images):
    biomedclip.zero_grad()
    out = biomedclip(images, CLASSES)
    assert out['H_semantic_maps'].shape == (2, 2, 196)
    assert out['patch_features'].shape == (2, 196, 512)
    assert out['grid_size'] == (14, 14)
    # A loss that depends on both prompt kinds.
    target = torch.tensor([0, 1]).repeat_interleave(98).expand(2, -1)
    loss = torch.nn.functional.cross_entropy(
        out['H_semantic_maps'] * 10, target)
    loss.backward()
    for param in (biomedclip.visual_prompt_learner.prompts,
                  biomedclip.text_prompt_learner.context):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert all(p.grad is None for p in biomedclip.clip_model.parameters())
    assert biomedclip.device == torch.device('cpu')


@torch.no_grad()
def test_input_ranges_give_identical_outputs(biomedclip, images):
    ref_pixels = biomedclip.preprocess(images)
    grey = images[:, :1]
    variants = {
        '[-1,1]': (images * 2 - 1, ref_pixels),
        '[0,255]': (images * 255, ref_pixels),
        '[0,255] uint8 list': (list((images * 255).round().byte()),
                               biomedclip.preprocess(
                                   (images * 255).round() / 255)),
        '1 channel': (grey, biomedclip.preprocess(grey.expand(-1, 3, -1, -1))),
    }
    for name, (x, expected) in variants.items():
        torch.testing.assert_close(biomedclip.preprocess(x), expected,
                                   atol=1e-5, rtol=1e-5, msg=name)
    # and end to end, through the prompted towers
    ref = biomedclip(images, CLASSES)['H_semantic_maps']
    out = biomedclip(images * 255, CLASSES)['H_semantic_maps']
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fidelity_without_prompts(biomedclip, images):
    """0 visual prompts, no text context: exactly open_clip's own forward."""
    clip = biomedclip.clip_model
    plain = VPTTPTSegmentor(clip_model=clip, tokenizer=biomedclip.tokenizer,
                            num_visual_prompts=0, num_text_prompts=0)
    pixels = plain.preprocess(images)
    tokens = plain.encode_image_tokens(pixels)
    # open_clip's encode_image path: TimmModel.forward =
    # head(trunk.forward_head(trunk.forward_features(x)))
    ref_tokens = clip.visual.trunk.forward_features(pixels)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.visual_tower.project(tokens[:, 1:]),
                               clip.visual.head(ref_tokens[:, 1:]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.visual_tower.pool(tokens),
                               clip.encode_image(pixels), atol=1e-5, rtol=0)
    ids = biomedclip.tokenizer(CLASSES)
    ref_text = clip.encode_text(ids)
    torch.testing.assert_close(plain.encode_text(CLASSES), ref_text,
                               atol=1e-5, rtol=0)
    # and the prompts do change the text features
    assert not torch.allclose(biomedclip.encode_text(CLASSES), ref_text,
                              atol=1e-3)
