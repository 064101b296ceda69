"""BERT WordPiece tokenizer from a local vocabulary, open_clip style.

BiomedCLIP's text tower is PubMedBERT; open_clip tokenizes it with
``HFTokenizer(<hub id>)``, which downloads.  :class:`LocalBertTokenizer` is
the same tokenizer built from a ``vocab.txt`` on disk (the one in a
downloaded BiomedCLIP folder, or the tiny test vocabulary shipped here).
"""
import os
from pathlib import Path
from typing import Union

from open_clip.tokenizer import HFTokenizer, get_clean_fn


def find_vocab_file(source: Union[str, os.PathLike]) -> Path:
    """``source`` itself if it is a file, else ``source/vocab.txt``."""
    path = Path(source)
    if path.is_dir():
        path = path / 'vocab.txt'
    if not path.is_file():
        raise FileNotFoundError(
            f'BERT vocabulary not found: {path} (pass a vocab.txt file or a '
            'folder containing one, e.g. the downloaded BiomedCLIP folder)')
    return path


class LocalBertTokenizer(HFTokenizer):
    """open_clip ``HFTokenizer`` over a local BERT ``vocab.txt``.

    ``tokenizer(texts) -> LongTensor (N, context_length)``: ``[CLS]`` ...
    ``[SEP]`` then ``[PAD]`` (id of ``[PAD]``) up to ``context_length``,
    truncated to it; whitespace cleaned, lower-cased (uncased vocabulary).

    Args:
        vocab (str | Path): ``vocab.txt`` or a folder containing it.
        context_length (int): token sequence length. Default: 256.
        do_lower_case (bool): lower-case before WordPiece. Default: True.

    Attributes:
        cls_token_id, sep_token_id, pad_token_id (int): special token ids
            (PubMedBERT: 2, 3, 0).
        vocab_size (int): entries in the vocabulary.
    """

    def __init__(self,
                 vocab: Union[str, os.PathLike],
                 context_length: int = 256,
                 do_lower_case: bool = True):
        from transformers import BertTokenizerFast

        # HFTokenizer.__init__ would resolve a hub id; build the HF
        # tokenizer from the file and set the attributes its __call__ reads.
        self.vocab_file = find_vocab_file(vocab)
        self.tokenizer = BertTokenizerFast(
            vocab_file=str(self.vocab_file), do_lower_case=do_lower_case)
        self.tokenizer_mode = ''
        self.context_length = int(context_length)
        self.clean_fn = get_clean_fn('whitespace')
        self.strip_sep_token = False

    @property
    def cls_token_id(self) -> int:
        return self.tokenizer.cls_token_id

    @property
    def sep_token_id(self) -> int:
        return self.tokenizer.sep_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size
