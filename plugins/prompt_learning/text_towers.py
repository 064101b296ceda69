"""Uniform access to the text towers of open_clip models.

Context-prompt learning (CoOp) feeds the tower token *embeddings* with
learned vectors spliced in, instead of token ids.  open_clip has two text
towers; the adapters here give both the same two steps:

* ``embed_tokens(ids)``: the tower's word/token embedding, ``(N, L, C)``
* ``encode(embeds, prompt_ids)``: everything after the token embedding, up to
  the projected text feature ``(N, D)``, exactly as the tower's own forward.

``prompt_ids`` are the token ids aligned with ``embeds`` after the splice,
with :data:`CONTEXT_TOKEN_ID` at the learned positions; the towers use them
only for what the ids decide besides the embedding: the padding mask (BERT)
and the pooling position (argmax/eos pooling of open_clip's transformer).

Start tokens differ: BERT towers begin with ``[CLS]`` (id 2 in PubMedBERT's
vocabulary) and end with ``[SEP]`` (id 3); open_clip's tokenizer begins with
``<start_of_text>`` and ends with ``<end_of_text>``, the largest id, which
argmax pooling finds.  Context vectors always go right after the start token.
"""
from typing import Optional

import torch
from torch import nn

#: Placeholder id at learned-context positions of ``prompt_ids``: it is not
#: padding (so BERT attends to it), never the largest id (so argmax pooling
#: still finds the end token) and never an end-of-sequence id.
CONTEXT_TOKEN_ID = -1


class HFTextTower:
    """open_clip ``HFTextEncoder`` (BiomedCLIP: PubMedBERT, width 768).

    The HF model's own forward runs on ``inputs_embeds``: it adds BERT's
    position and token-type embeddings, applies the embedding LayerNorm and
    dropout and runs the encoder; then the tower's ``pooler`` and ``proj``
    (BiomedCLIP: ``Sequential(Linear(768, 640), GELU, Linear(640, 512))``).

    Args:
        text (nn.Module): ``model.text`` (an open_clip ``HFTextEncoder``).
    """

    kind = 'hf'

    def __init__(self, text: nn.Module) -> None:
        self.text = text
        config = text.transformer.config
        self.width = text.transformer.get_input_embeddings().embedding_dim
        self.context_length = getattr(config, 'max_position_embeddings',
                                      None)
        self.pad_id = config.pad_token_id

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.transformer.get_input_embeddings()(ids)

    def encode(self, embeds: torch.Tensor,
               prompt_ids: torch.Tensor) -> torch.Tensor:
        mask = (prompt_ids != self.pad_id).long()
        out = self.text.transformer(inputs_embeds=embeds, attention_mask=mask)
        return self.text.proj(self.text.pooler(out, mask))


class OpenCLIPTextTower:
    """open_clip's own causal text transformer (``ViT-B-16``'s text tower).

    Works on a ``TextTransformer`` (``CustomTextCLIP.text``) and on a plain
    ``CLIP`` model, which keeps the same modules on itself.

    Args:
        owner (nn.Module): the ``TextTransformer`` or the ``CLIP`` model.
    """

    kind = 'open_clip'

    def __init__(self, owner: nn.Module) -> None:
        if getattr(owner, 'cls_emb', None) is not None:
            raise NotImplementedError('text towers with a learned class '
                                      'embedding (CoCa) are not supported')
        if getattr(owner, 'use_pad_mask', False):
            raise NotImplementedError('bidirectional text towers with a '
                                      'padding mask are not supported')
        self.owner = owner
        self.width = owner.token_embedding.embedding_dim
        self.context_length = owner.positional_embedding.shape[0]
        self.pad_id = getattr(owner, 'pad_id', 0)
        # TextTransformer names them pool_type/eos_id, CLIP text_pool_type/..
        self.pool_type = getattr(owner, 'pool_type',
                                 getattr(owner, 'text_pool_type', 'argmax'))
        self.eos_id = getattr(owner, 'eos_id',
                              getattr(owner, 'text_eos_id', None))

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        return owner.token_embedding(ids).to(
            owner.transformer.get_cast_dtype())

    def encode(self, embeds: torch.Tensor,
               prompt_ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        owner = self.owner
        length = embeds.shape[1]
        x = embeds + owner.positional_embedding[:length].to(embeds.dtype)
        attn_mask = owner.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        x = owner.transformer(x, attn_mask=attn_mask)
        x = owner.ln_final(x)
        x = text_global_pool(x, prompt_ids, self.pool_type,
                             eos_token_id=self.eos_id)
        proj = owner.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj


def build_text_tower(clip_model: nn.Module):
    """Pick the adapter for the text tower of ``clip_model``.

    Returns:
        HFTextTower | OpenCLIPTextTower
    """
    text = getattr(clip_model, 'text', None)
    if text is not None and hasattr(text, 'pooler') and hasattr(
            text, 'transformer') and hasattr(text, 'proj'):
        return HFTextTower(text)
    for owner in (text, clip_model):
        if owner is not None and hasattr(owner, 'token_embedding'):
            return OpenCLIPTextTower(owner)
    raise TypeError(f'{type(clip_model).__name__}: no open_clip text tower '
                    '(HFTextEncoder or text transformer) found')


def start_token_id(tokenizer) -> Optional[int]:
    """The id every tokenized prompt starts with, if the tokenizer says.

    open_clip's ``SimpleTokenizer`` has ``sot_token_id``; its ``HFTokenizer``
    wraps a HF tokenizer with ``cls_token_id`` (BERT: ``[CLS]``).
    """
    sot = getattr(tokenizer, 'sot_token_id', None)
    if sot is not None:
        return int(sot)
    cls = getattr(getattr(tokenizer, 'tokenizer', None), 'cls_token_id', None)
    return None if cls is None else int(cls)
