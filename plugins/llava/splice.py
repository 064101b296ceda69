"""Splice projected image tokens into a text sequence at ``<image>`` ids."""
from dataclasses import dataclass
from typing import Optional

import torch

IGNORE_INDEX = -100


@dataclass
class SplicedInputs:
    """The LLM's inputs after :func:`splice_image_tokens`.

    Attributes:
        inputs_embeds (Tensor): ``(B, L', C)``; sequences are right-padded
            with zeros to the longest one.
        attention_mask (Tensor): ``(B, L')`` long, 1 on text and image
            tokens that were attended before, 0 on padding.
        labels (Tensor | None): ``(B, L')``, ``IGNORE_INDEX`` on image tokens
            and padding.
        token_positions (Tensor): ``(B, L)``, the new index of every input
            token (for ``<image>``: the index of its first image token).
        image_positions (Tensor): ``(K, N)``, the new indices of the ``N``
            tokens of each of the ``K`` images, in batch order.
    """
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor]
    token_positions: torch.Tensor
    image_positions: torch.Tensor


def splice_image_tokens(input_ids: torch.Tensor,
                        inputs_embeds: torch.Tensor,
                        image_features: torch.Tensor,
                        image_token_id: int,
                        attention_mask: Optional[torch.Tensor] = None,
                        labels: Optional[torch.Tensor] = None,
                        ignore_index: int = IGNORE_INDEX) -> SplicedInputs:
    """Replace every ``<image>`` token by the ``N`` tokens of one image.

    LLaVA/PSALM style: the tokenizer emits one placeholder per image, and
    the placeholder's embedding is replaced by the image's projected tokens,
    so a row grows by ``N - 1`` per image. Placeholders consume images in
    row-major order (all of sample 0, then sample 1, ...). Done with index
    arithmetic on the whole batch, without a Python loop over samples.

    Args:
        input_ids (Tensor): ``(B, L)`` token ids (right-padded).
        inputs_embeds (Tensor): ``(B, L, C)`` embeddings of ``input_ids``.
        image_features (Tensor): ``(K, N, C)`` projected image tokens; ``K``
            must equal the number of ``<image>`` tokens in the batch.
        image_token_id (int): The id of ``<image>``.
        attention_mask (Tensor, optional): ``(B, L)``; ones if omitted.
        labels (Tensor, optional): ``(B, L)`` language-model targets.
        ignore_index (int): Label for image tokens and padding.

    Returns:
        SplicedInputs: embeddings, mask and labels of length
        ``L' = max_b (L + n_b * (N - 1))``, and where everything went.
    """
    if input_ids.shape != inputs_embeds.shape[:2]:
        raise ValueError(f'input_ids {tuple(input_ids.shape)} and '
                         f'inputs_embeds {tuple(inputs_embeds.shape)} disagree '
                         'on (B, L)')
    if image_features.dim() != 3 or (image_features.shape[-1]
                                     != inputs_embeds.shape[-1]):
        raise ValueError(f'image_features must be (K, N, '
                         f'{inputs_embeds.shape[-1]}), got '
                         f'{tuple(image_features.shape)}')
    batch, length = input_ids.shape
    num_tokens = image_features.shape[1]
    is_image = input_ids == image_token_id
    num_placeholders = int(is_image.sum())
    if num_placeholders != image_features.shape[0]:
        raise ValueError(f'the batch has {num_placeholders} <image> tokens '
                         f'(id {image_token_id}) but {image_features.shape[0]} '
                         'images')
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    # Every token occupies 1 slot, every placeholder N: the cumulative sum of
    # the widths gives each token's end, and end - width its new start.
    widths = 1 + is_image.long() * (num_tokens - 1)
    ends = widths.cumsum(dim=1)
    starts = ends - widths
    new_lengths = ends[:, -1]
    new_length = int(new_lengths.max())

    device = input_ids.device
    rows = torch.arange(batch, device=device)[:, None].expand(batch, length)
    text = ~is_image
    text_rows, text_cols = rows[text], starts[text]
    img_rows, img_cols = rows[is_image], starts[is_image]
    offsets = torch.arange(num_tokens, device=device)
    image_positions = img_cols[:, None] + offsets  # (K, N)
    img_rows_n = img_rows[:, None].expand_as(image_positions)

    embeds = inputs_embeds.new_zeros(batch, new_length, inputs_embeds.shape[-1])
    embeds = embeds.index_put((text_rows, text_cols), inputs_embeds[text])
    embeds = embeds.index_put(
        (img_rows_n.reshape(-1), image_positions.reshape(-1)),
        image_features.to(inputs_embeds.dtype).reshape(-1, embeds.shape[-1]))

    new_mask = attention_mask.new_zeros(batch, new_length)
    new_mask[text_rows, text_cols] = attention_mask[text]
    new_mask[img_rows_n, image_positions] = 1

    new_labels = None
    if labels is not None:
        new_labels = labels.new_full((batch, new_length), ignore_index)
        new_labels[text_rows, text_cols] = labels[text]

    return SplicedInputs(inputs_embeds=embeds, attention_mask=new_mask,
                         labels=new_labels, token_positions=starts,
                         image_positions=image_positions)
