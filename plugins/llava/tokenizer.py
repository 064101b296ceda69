"""Tokenizers for the LLaVA-Phi segmentation model.

The model needs two extra tokens: ``<image>`` (one placeholder per image,
replaced by the projected image tokens) and ``[SEG]`` (its last hidden state
becomes the mask query). :func:`add_llava_tokens` adds them to any Hugging
Face tokenizer (e.g. a local copy of Phi-1.5's). :func:`build_toy_tokenizer`
builds a small word-level tokenizer offline, for the toy data and tests.
"""
from typing import Iterable, Tuple

IMAGE_TOKEN = '<image>'
SEG_TOKEN = '[SEG]'
PAD_TOKEN = '<pad>'
UNK_TOKEN = '<unk>'
EOS_TOKEN = '<|endoftext|>'  # Phi's end-of-text token

#: Words of the toy referring prompts (see :mod:`plugins.llava.data`).
TOY_WORDS = (
    'user', 'assistant', ':', 'please', 'segment', 'the', '.', 'sure', ',',
    'it', 'is', 'red', 'green', 'blue', 'yellow', 'circle', 'square',
    'triangle', 'all', 'circles', 'squares', 'triangles', 'shape', 'shapes')


def add_llava_tokens(tokenizer) -> Tuple[int, int]:
    """Add ``<image>`` and ``[SEG]`` (and a pad token if missing).

    Returns:
        tuple: ``(image_token_id, seg_token_id)``. Resize the LLM's
        embeddings to ``len(tokenizer)`` afterwards.
    """
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({'pad_token': PAD_TOKEN})
    tokenizer.add_special_tokens(
        {'additional_special_tokens': [IMAGE_TOKEN, SEG_TOKEN]})
    return (tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            tokenizer.convert_tokens_to_ids(SEG_TOKEN))


def build_toy_tokenizer(words: Iterable[str] = TOY_WORDS):
    """A lower-casing word-level ``PreTrainedTokenizerFast`` (no download).

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<|endoftext|>`` 2, then ``words``, then
    ``<image>`` and ``[SEG]``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1, EOS_TOKEN: 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
        eos_token=EOS_TOKEN, padding_side='right')
    add_llava_tokens(tokenizer)
    return tokenizer
