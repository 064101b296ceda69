"""Tiny LLaVA-Phi segmentation fixtures (random weights, CPU)."""
import pytest
import torch


@pytest.fixture(scope='module')
def toy_tokenizer():
    from plugins.llava.tokenizer import build_toy_tokenizer
    return build_toy_tokenizer()


def make_tiny_config(tokenizer, **overrides):
    from plugins.llava.config import LlavaSegConfig
    config = LlavaSegConfig.from_file('llava-phi-seg_tiny', **overrides)
    config.image_token_id = tokenizer.convert_tokens_to_ids('<image>')
    config.seg_token_id = tokenizer.convert_tokens_to_ids('[SEG]')
    config.llm['vocab_size'] = len(tokenizer)
    return config


@pytest.fixture(scope='module')
def tiny_config(toy_tokenizer):
    return make_tiny_config(toy_tokenizer)


@pytest.fixture(scope='module')
def tiny_model(tiny_config):
    from plugins.llava.model import LlavaPhiSegModel
    torch.manual_seed(0)
    return LlavaPhiSegModel(tiny_config)


@pytest.fixture(scope='module')
def toy_batch(toy_data_root, toy_tokenizer):
    """Two referring samples of the shared toy data, collated."""
    from plugins.llava.data import ToyReferringSegDataset, collate_referring
    dataset = ToyReferringSegDataset(toy_data_root, toy_tokenizer,
                                     image_size=128)
    return collate_referring([dataset[0], dataset[1]],
                             toy_tokenizer.pad_token_id)
