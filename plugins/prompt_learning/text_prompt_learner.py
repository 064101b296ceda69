"""Context optimisation (CoOp, Zhou et al. 2022) for a frozen text tower."""
from typing import Optional, Tuple

import torch
from torch import nn

from .text_towers import CONTEXT_TOKEN_ID


class TextPromptLearner(nn.Module):
    """Learned context vectors between the start token and the class name.

    A prompt ``[START, C_1 .. C_n, <class name tokens>, END]`` is built in
    embedding space: the tokenized class name is embedded by the tower and
    the ``n`` context vectors go right after the start token (BERT:
    ``[CLS]`` id 2 with PubMedBERT's vocabulary, then ``[SEP]`` id 3 at the
    end; open_clip: ``<start_of_text>`` ... ``<end_of_text>``).  Prompt plus
    context must fit the tokenizer's context length (256 / 77).  Padding
    columns after the longest prompt are dropped (they cannot change the
    features: BERT masks them, open_clip's causal mask hides them from the
    end token).  The context is shared by all classes (unified CoOp).  The
    tower then encodes the embeddings as its own forward would; with
    ``num_context=0`` the output equals ``encode_text``.

    With PubMedBERT (width 768) and 4 context vectors: 3,072 parameters.

    Args:
        num_context (int): context vectors. Defaults to 4.
        width (int): token embedding width of the text tower. Defaults to 768.
        init_std (float): std of the normal initialisation. Defaults to 0.02.

    Shapes:
        forward: token ids ``(K, L)`` -> text features ``(K, D)``.
    """

    def __init__(self,
                 num_context: int = 4,
                 width: int = 768,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if num_context < 0:
            raise ValueError(f'num_context ({num_context}) must be >= 0')
        self.num_context = num_context
        self.width = width
        self.context = nn.Parameter(torch.empty(num_context, width))
        nn.init.normal_(self.context, std=init_std)

    def extra_repr(self) -> str:
        return f'num_context={self.num_context}, width={self.width}'

    def build_prompts(
            self, token_ids: torch.Tensor, tower,
            start_token_id: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Splice the context into embedded token ids.

        Args:
            token_ids (Tensor): ``(K, L)`` tokenizer output, padded.
            tower: a text tower adapter (:func:`build_text_tower`).
            start_token_id (int, optional): checked against every first id.

        Returns:
            tuple: embeddings ``(K, L', C)`` and the matching ``prompt_ids``
            ``(K, L')`` with :data:`CONTEXT_TOKEN_ID` at context positions;
            ``L'`` = longest prompt + ``num_context``.
        """
        if tower.width != self.width:
            raise ValueError(f'text context has width {self.width}, the text '
                             f'tower {tower.width}')
        if start_token_id is not None and bool(
                (token_ids[:, 0] != start_token_id).any()):
            raise ValueError(
                f'token ids must start with the start token {start_token_id} '
                f'(got {token_ids[:, 0].tolist()}); tokenize with the '
                "model's own tokenizer")
        n = self.num_context
        length = token_ids.shape[1]
        # Drop the padding columns all prompts share: BERT masks padded keys
        # and open_clip's causal mask hides them from the end token, so the
        # features do not change, and the tower runs on a few tokens instead
        # of the tokenizer's full context (256 for BiomedCLIP).
        positions = torch.arange(1, length + 1, device=token_ids.device)
        last = ((token_ids != tower.pad_id) * positions).amax(dim=1)
        used = int(last.max())
        if used + n > length:
            row = int(last.argmax())
            raise ValueError(
                f'prompt {row} has {used} tokens; with {n} context vectors it '
                f'exceeds the context length {length}; shorten the class name')
        token_ids = token_ids[:, :used]
        embeds = tower.embed_tokens(token_ids)
        if n == 0:
            return embeds, token_ids
        num_rows = token_ids.shape[0]
        context = self.context.to(embeds.dtype).expand(num_rows, -1, -1)
        embeds = torch.cat([embeds[:, :1], context, embeds[:, 1:]], dim=1)
        prompt_ids = torch.cat([
            token_ids[:, :1],
            token_ids.new_full((num_rows, n), CONTEXT_TOKEN_ID),
            token_ids[:, 1:]
        ], dim=1)
        return embeds, prompt_ids

    def forward(self, token_ids: torch.Tensor, tower,
                start_token_id: Optional[int] = None) -> torch.Tensor:
        embeds, prompt_ids = self.build_prompts(token_ids, tower,
                                                start_token_id)
        return tower.encode(embeds, prompt_ids)
