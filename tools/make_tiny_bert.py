"""Write a tiny random BERT folder (weights, config, vocab) for offline demos.

mmdet's GroundingDINO loads its text encoder with
``AutoTokenizer.from_pretrained(lang_model_name)`` and
``BertModel.from_pretrained(lang_model_name)``; with a local folder nothing is
fetched.  Real users point ``lang_model_name`` at a downloaded
``bert-base-uncased`` folder; the demos and tests use this tiny one.

Usage::

    python tools/make_tiny_bert.py [--out data/tiny_bert] [--hidden 64]
        [--layers 2] [--heads 4] [--seed 0]
"""
import argparse
import string
import sys
from pathlib import Path

SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
# Words of the toy prompts and of common detection captions; anything else
# is split into characters (every lowercase letter and digit is in the vocab).
WORDS = ('circle square triangle red green blue yellow a an the of and with '
         'in on shape object background segment').split()


def build_vocab() -> list:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ['##' + c for c in string.ascii_lowercase + string.digits]
    vocab = SPECIAL_TOKENS + chars + pieces + WORDS
    return list(dict.fromkeys(vocab))


def make_tiny_bert(out, hidden: int = 64, layers: int = 2, heads: int = 4,
                   seed: int = 0) -> Path:
    """Write the folder and return its path."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    (out / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    tokenizer = BertTokenizerFast(vocab_file=str(out / 'vocab.txt'),
                                  do_lower_case=True)
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 4,
                        max_position_embeddings=512)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(
        out, safe_serialization=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/tiny_bert')
    parser.add_argument('--hidden', type=int, default=64)
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    path = make_tiny_bert(args.out, args.hidden, args.layers, args.heads,
                          args.seed)
    print(f'tiny BERT written to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
