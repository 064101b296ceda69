"""VPTTPTSegmentor API on tiny models: prompts I/O, modes, inputs."""
import pytest
import torch

from plugins.prompt_learning import VPTTPTSegmentor


def reprompt(seg, **kwargs):
    return VPTTPTSegmentor(clip_model=seg.clip_model, tokenizer=seg.tokenizer,
                           **kwargs)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_prompts_round_trip_exactly(tiny_segmentor, tmp_path, suffix):
    src = reprompt(tiny_segmentor)
    dst = reprompt(tiny_segmentor)
    assert not torch.equal(src.visual_prompt_learner.prompts,
                           dst.visual_prompt_learner.prompts)
    path = tmp_path / f'prompts{suffix}'
    src.save_all_prompts(path)
    dst.load_all_prompts(path)
    assert torch.equal(src.visual_prompt_learner.prompts,
                       dst.visual_prompt_learner.prompts)
    assert torch.equal(src.text_prompt_learner.context,
                       dst.text_prompt_learner.context)
    from plugins.utils import safe_load
    assert sorted(safe_load(path)) == ['text_context', 'visual_prompts']


def test_loading_other_prompt_counts_fails_clearly(tiny_biomedclip, tmp_path):
    path = tmp_path / 'p.safetensors'
    reprompt(tiny_biomedclip, num_visual_prompts=8).save_all_prompts(path)
    with pytest.raises(ValueError,
                       match=r'visual_prompts has shape \(6, 8, 64\) but this '
                       r'model expects \(6, 4, 64\) \(num_visual_prompts=4'):
        reprompt(tiny_biomedclip).load_all_prompts(path)
    reprompt(tiny_biomedclip, num_text_prompts=2).save_all_prompts(path)
    with pytest.raises(ValueError, match='num_text_prompts=4'):
        reprompt(tiny_biomedclip).load_all_prompts(path)
    torch.save({'visual_prompts': torch.zeros(6, 4, 64)}, tmp_path / 'x.pth')
    with pytest.raises(KeyError, match='text_context'):
        reprompt(tiny_biomedclip).load_all_prompts(tmp_path / 'x.pth')


def test_clip_stays_frozen_and_in_eval_mode(tiny_biomedclip):
    seg = reprompt(tiny_biomedclip, visual_prompt_dropout=0.1)
    seg.train()
    assert seg.training and seg.visual_prompt_learner.dropout.training
    assert not seg.clip_model.training
    assert not any(m.training for m in seg.clip_model.modules())
    assert seg.device == torch.device('cpu')
    assert [n for n, p in seg.named_parameters() if p.requires_grad] == [
        'visual_prompt_learner.prompts', 'text_prompt_learner.context']


@torch.no_grad()
def test_images_of_any_size_and_lists(tiny_open_clip):
    seg = tiny_open_clip
    a, b = torch.rand(3, 100, 80), torch.rand(3, 224, 224)
    batch = seg([a, b], ['x', 'y'])['H_semantic_maps']
    assert batch.shape == (2, 2, 196)
    torch.testing.assert_close(batch[1:], seg(b[None], ['x', 'y'])[
        'H_semantic_maps'], atol=1e-5, rtol=1e-5)
    assert (batch.abs() <= 1 + 1e-5).all()  # cosine similarities
    with pytest.raises(ValueError, match='class_names is empty'):
        seg(b[None], [])


def test_clip_model_and_pretrained_exclusive(tiny_open_clip):
    with pytest.raises(ValueError, match='either clip_model or pretrained'):
        VPTTPTSegmentor(clip_model=tiny_open_clip.clip_model,
                        tokenizer=tiny_open_clip.tokenizer,
                        pretrained='weights.bin')
    with pytest.raises(ValueError, match='tokenizer'):
        VPTTPTSegmentor(clip_model=tiny_open_clip.clip_model)


def test_openclip_vit_b16_real_architecture():
    """OpenCLIP ViT-B/16 (open_clip's own ViT and text transformer)."""
    torch.manual_seed(0)
    seg = VPTTPTSegmentor(model_name='ViT-B-16')
    trainable = {n: p.numel() for n, p in seg.named_parameters()
                 if p.requires_grad}
    assert trainable == {'visual_prompt_learner.prompts': 12 * 4 * 768,
                         'text_prompt_learner.context': 4 * 512}
    with torch.no_grad():
        out = seg(torch.rand(2, 3, 224, 224), ['prostate', 'background'])
        assert out['H_semantic_maps'].shape == (2, 2, 196)
        assert out['patch_features'].shape == (2, 196, 512)
        plain = reprompt(seg, num_visual_prompts=0, num_text_prompts=0)
        ids = seg.tokenizer(['prostate', 'background'])
        torch.testing.assert_close(
            plain.encode_text(['prostate', 'background']),
            seg.clip_model.encode_text(ids), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_and_bf16_autocast():
    seg = VPTTPTSegmentor(model_name='BiomedCLIP-Tiny-test').cuda()
    assert seg.device.type == 'cuda'
    images = torch.rand(2, 3, 96, 96)  # on the CPU: moved by preprocess
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = seg(images, ['a', 'b'])
    out['H_semantic_maps'].float().sum().backward()
    assert seg.visual_prompt_learner.prompts.grad.abs().sum() > 0
    assert seg.text_prompt_learner.context.grad.abs().sum() > 0


def test_fan_in_random_init_separates_class_names(tiny_biomedclip):
    """open_clip's init gives near-identical class features when frozen;
    the demo's fan-in init does not (and refuses pretrained weights)."""
    import torch.nn.functional as F
    names = ['circle', 'square', 'triangle', 'background']

    def min_angle_gap(seg):
        with torch.no_grad():
            t = F.normalize(seg.encode_text(names), dim=-1)
        return float(1 - (t @ t.T).fill_diagonal_(-1).max())

    torch.manual_seed(0)
    fan_in = VPTTPTSegmentor(model_name='BiomedCLIP-Tiny-test',
                             random_init='fan_in')
    assert min_angle_gap(tiny_biomedclip) < 1e-3
    assert min_angle_gap(fan_in) > 1e-3
    with pytest.raises(ValueError, match='cannot be combined'):
        VPTTPTSegmentor(pretrained='x.bin', random_init='fan_in')
    with pytest.raises(ValueError, match='random_init'):
        VPTTPTSegmentor(random_init='xavier')


def test_pretrained_weights_load_by_path(tmp_path):
    """`pretrained=` loads a BiomedCLIP weights file through the same
    builder users run: every CLIP tensor equals the saved one."""
    torch.manual_seed(1)
    source = VPTTPTSegmentor(model_name='BiomedCLIP-Tiny-test')
    weights = {k: v.clone() for k, v in source.clip_model.state_dict().items()}
    path = tmp_path / 'open_clip_pytorch_model.bin'
    torch.save(weights, path)
    torch.manual_seed(2)  # a different random init underneath
    loaded = VPTTPTSegmentor(model_name='BiomedCLIP-Tiny-test',
                             pretrained=str(path))
    state = loaded.clip_model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key
    assert not any(p.requires_grad for p in loaded.clip_model.parameters())


def test_build_clip_follows_the_config_not_the_name(config_copy,
                                                    bert_without_vocab):
    """A BERT text tower without a vocab.txt gets the test vocabulary
    whatever the config is called (not only names starting 'BiomedCLIP')."""
    from plugins.models import BIOMEDCLIP_TINY_MODEL_NAME
    from plugins.prompt_learning.vpt_tpt_segmentor import build_clip
    name = config_copy(BIOMEDCLIP_TINY_MODEL_NAME, 'UltrasoundCLIP-Tiny',
                       updates=bert_without_vocab).stem
    model, tokenizer = build_clip(name)
    assert type(model.text).__name__ == 'HFTextEncoder'
    ids = tokenizer(['prostate'])
    assert ids.shape == (1, 256) and ids[0, 0] == 2  # PubMedBERT's [CLS]
