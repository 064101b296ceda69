"""The compact LLaVA-Phi segmentation model on CPU (tiny random config)."""
import copy

import pytest
import torch

from plugins.llava.config import LlavaSegConfig, load_json_config
from plugins.llava.model import (LlavaPhiSegModel, load_pretrained_phi,
                                 read_phi_config)


def _forward(model, batch, **kwargs):
    return model(images=batch['pixel_values'], input_ids=batch['input_ids'],
                 attention_mask=batch['attention_mask'],
                 labels=batch['labels'], masks=batch['masks'], **kwargs)


def test_vision_tower_returns_four_nchw_maps(tiny_model):
    tower = tiny_model.vision_tower
    maps = tower(torch.randn(2, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [
        (2, 128, 32, 32), (2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4)]
    assert tower.channels == [128, 256, 512, 1024]  # Swin-B widths
    assert tower.strides == [4, 8, 16, 32]
    assert not any(p.requires_grad for p in tower.parameters())
    tiny_model.train()
    assert not tower.training  # a frozen tower stays in eval mode
    tiny_model.eval()


def test_forward_shapes_and_named_losses(tiny_model, toy_batch, tiny_config):
    out = _forward(tiny_model, toy_batch)
    batch, length = toy_batch['input_ids'].shape
    _, tokens = tiny_model.encode_images(toy_batch['pixel_values'])
    n_img = tokens.shape[1]
    assert tokens.shape == (batch, n_img, tiny_config.hidden_size)
    assert out.logits.shape == (batch, length + n_img - 1,
                                tiny_config.llm['vocab_size'])
    assert out.mask_logits.shape == (batch, 128, 128)  # one [SEG] each
    assert out.seg_batch_index.tolist() == [0, 1]
    assert set(out.losses) == {'loss_llm', 'loss_mask', 'loss_dice'}
    assert all(torch.isfinite(v) for v in out.losses.values())
    expected = (out.losses['loss_llm'] + 2.0 * out.losses['loss_mask']
                + 1.0 * out.losses['loss_dice'])
    torch.testing.assert_close(out.loss.detach(), expected)


def test_gradients_skip_frozen_tower(tiny_model, toy_batch):
    tiny_model.zero_grad(set_to_none=True)
    _forward(tiny_model, toy_batch).loss.backward()
    for name in ('mm_projector', 'llm', 'pixel_decoder', 'mask_head'):
        grads = [p.grad for p in getattr(tiny_model, name).parameters()
                 if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0
                             for g in grads), name
    assert all(p.grad is None for p in tiny_model.vision_tower.parameters())
    tiny_model.zero_grad(set_to_none=True)


def test_bf16_forward_on_cpu(tiny_model, toy_batch):
    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    assert model.vision_tower.dtype == torch.bfloat16
    maps = model.vision_tower(toy_batch['pixel_values'])
    assert all(m.dtype == torch.bfloat16 for m in maps)
    out = _forward(model, toy_batch)
    assert out.mask_logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32  # losses are computed in fp32
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_half_vision_tower_feeds_fp32_projector(tiny_config, toy_batch):
    # PSALM's set-up: tower cast to the compute dtype, the rest in fp32.
    torch.manual_seed(0)
    model = LlavaPhiSegModel(tiny_config, vision_dtype=torch.bfloat16)
    assert model.vision_tower.dtype == torch.bfloat16
    assert next(model.mm_projector.parameters()).dtype == torch.float32
    out = _forward(model, toy_batch)
    assert torch.isfinite(out.loss)


def test_mask_target_count_is_checked(tiny_model, toy_batch):
    with pytest.raises(ValueError, match=r'1 target masks for 2 \[SEG\]'):
        tiny_model(images=toy_batch['pixel_values'],
                   input_ids=toy_batch['input_ids'],
                   attention_mask=toy_batch['attention_mask'],
                   masks=toy_batch['masks'][:1])


def test_token_ids_must_be_set():
    config = LlavaSegConfig.from_file('llava-phi-seg_tiny')
    with pytest.raises(ValueError, match='image_token_id'):
        LlavaPhiSegModel(config)


def test_config_files():
    with pytest.raises(ValueError, match='unknown LlavaSegConfig keys'):
        LlavaSegConfig.from_file('llava-phi-seg_tiny', not_a_key=1)
    with pytest.raises(FileNotFoundError, match='shipped config'):
        load_json_config('no-such-config')
    real = LlavaSegConfig.from_file('llava-phi-1_5-seg_swin-b')
    assert real.hidden_size == 2048 and real.llm['num_hidden_layers'] == 24
    proj = real.projector_config([128, 256, 512, 1024])
    assert (proj.projector_outdim, proj.swin_type, proj.mm_n_heads,
            proj.mm_n_points, proj.mm_hidden_dim) == (2048, 'base', 8, 4, 256)


def test_load_pretrained_phi_round_trip(tmp_path, tiny_config):
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(0)
    phi = PhiForCausalLM(PhiConfig(**tiny_config.llm)).eval()
    phi.save_pretrained(tmp_path, safe_serialization=True)
    vocab = tiny_config.llm['vocab_size']
    loaded = load_pretrained_phi(str(tmp_path), vocab + 2).eval()
    assert loaded.get_input_embeddings().weight.shape[0] == vocab + 2
    ids = torch.randint(0, vocab, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits[..., :vocab],
                                   phi(ids).logits)


@pytest.fixture
def phi_folder(tmp_path, tiny_config):
    """A tiny Phi saved as a Hugging Face folder, sharded in two."""
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(0)
    phi = PhiForCausalLM(PhiConfig(**tiny_config.llm))
    phi.save_pretrained(tmp_path, safe_serialization=True,
                        max_shard_size='40KB')
    assert (tmp_path / 'model.safetensors.index.json').is_file()
    return tmp_path


def test_load_pretrained_phi_reads_a_sharded_folder(phi_folder, tiny_config):
    vocab = tiny_config.llm['vocab_size']
    loaded = load_pretrained_phi(str(phi_folder), vocab)
    assert loaded.config.hidden_size == tiny_config.llm['hidden_size']


def test_phi_folder_without_config_json_names_it(phi_folder, tiny_config):
    (phi_folder / 'config.json').unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained_phi(str(phi_folder), tiny_config.llm['vocab_size'])
    message = str(info.value)
    assert f'{phi_folder / "config.json"} not found' in message
    assert 'model.safetensors.index.json' in message  # what is there
    with pytest.raises(FileNotFoundError, match='config.json not found'):
        read_phi_config(str(phi_folder))
    with pytest.raises(FileNotFoundError, match='Phi model folder not found'):
        read_phi_config(str(phi_folder / 'missing'))


def test_phi_malformed_shard_index_names_the_file(phi_folder, tiny_config):
    from plugins.utils import CheckpointError
    index = phi_folder / 'model.safetensors.index.json'
    index.write_text(index.read_text()[:-3])  # cut short
    with pytest.raises(CheckpointError) as info:
        load_pretrained_phi(str(phi_folder), tiny_config.llm['vocab_size'])
    assert f'{index}: not valid JSON' in str(info.value)


@pytest.mark.parametrize('projector_type,num_tokens', [
    ('swin_conv', 4),     # last map 4x4, stride-2 block -> 2x2
    ('linear', 16),       # last map's 4x4 tokens
    ('mlp2x_gelu', 16)])
def test_psalm_projector_types_are_drop_ins(tiny_config, toy_batch,
                                            projector_type, num_tokens):
    import dataclasses
    config = dataclasses.replace(tiny_config, mm_projector_type=projector_type)
    model = LlavaPhiSegModel(config)
    _, tokens = model.encode_images(toy_batch['pixel_values'])
    assert tokens.shape == (2, num_tokens, config.hidden_size)
    out = _forward(model, toy_batch)
    assert torch.isfinite(out.loss)
