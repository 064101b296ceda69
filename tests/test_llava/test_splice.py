"""Image-token splicing: positions, counts, labels, masks, gradients."""
import pytest
import torch

from plugins.llava.splice import IGNORE_INDEX, splice_image_tokens

IMG = 9


def _embed(ids, dim=4):
    # Embedding = the token id in every channel: easy to read back.
    return ids[..., None].float().expand(*ids.shape, dim).clone()


def test_positions_and_counts():
    ids = torch.tensor([[1, IMG, 2, 3, 0],     # image at 1, one pad
                        [IMG, 4, 5, 6, 7]])    # image at 0
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 2, 3, -100], [-100, 4, 5, 6, 7]])
    n = 3
    feats = torch.stack([torch.full((n, 4), 100.0 + k) for k in range(2)])
    out = splice_image_tokens(ids, _embed(ids), feats, IMG,
                              attention_mask=mask, labels=labels)
    # Each row grows by N - 1 = 2: both rows 5 + 2 = 7 long.
    assert out.inputs_embeds.shape == (2, 7, 4)
    assert out.image_positions.tolist() == [[1, 2, 3], [0, 1, 2]]
    # Row 0: [1, img0 x3, 2, 3, pad]; row 1: [img1 x3, 4, 5, 6, 7].
    assert out.inputs_embeds[0, :, 0].tolist() == [1, 100, 100, 100, 2, 3, 0]
    assert out.inputs_embeds[1, :, 0].tolist() == [101, 101, 101, 4, 5, 6, 7]
    assert out.token_positions.tolist() == [[0, 1, 4, 5, 6], [0, 3, 4, 5, 6]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0],
                                           [1, 1, 1, 1, 1, 1, 1]]
    assert out.labels.tolist() == [
        [-100, -100, -100, -100, 2, 3, -100],
        [-100, -100, -100, 4, 5, 6, 7]]
    # Exactly K * N image slots.
    assert int((out.inputs_embeds[..., 0] >= 100).sum()) == 2 * n


def test_unequal_rows_are_right_padded():
    ids = torch.tensor([[IMG, IMG, 1], [2, 3, 4]])  # 2 images, then none
    feats = torch.arange(2 * 2 * 4, dtype=torch.float).view(2, 2, 4) + 50
    out = splice_image_tokens(ids, _embed(ids), feats, IMG,
                              labels=torch.ones_like(ids))
    assert out.inputs_embeds.shape == (2, 5, 4)
    assert out.image_positions.tolist() == [[0, 1], [2, 3]]
    assert torch.equal(out.inputs_embeds[0, :4], feats.reshape(4, 4))
    assert out.inputs_embeds[1, :, 0].tolist() == [2, 3, 4, 0, 0]
    assert out.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert out.labels[1].tolist() == [1, 1, 1, IGNORE_INDEX, IGNORE_INDEX]
    assert out.labels[0, :4].tolist() == [IGNORE_INDEX] * 4


def test_count_mismatch_names_numbers():
    ids = torch.tensor([[1, IMG, 2]])
    with pytest.raises(ValueError, match=r'1 <image> tokens .* 2 images'):
        splice_image_tokens(ids, _embed(ids), torch.zeros(2, 3, 4), IMG)
    with pytest.raises(ValueError, match=r'\(K, N, 4\)'):
        splice_image_tokens(ids, _embed(ids), torch.zeros(1, 3, 5), IMG)


def test_gradients_reach_image_features_and_text():
    ids = torch.tensor([[1, IMG, 2]])
    text = _embed(ids).requires_grad_(True)
    feats = torch.randn(1, 4, 4, requires_grad=True)
    out = splice_image_tokens(ids, text, feats, IMG)
    out.inputs_embeds.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))
    assert text.grad[0, 0].eq(1).all() and text.grad[0, 1].eq(0).all()


def test_dtype_follows_text_embeddings():
    ids = torch.tensor([[IMG, 1]])
    out = splice_image_tokens(ids, _embed(ids).bfloat16(),
                              torch.randn(1, 2, 4), IMG)
    assert out.inputs_embeds.dtype == torch.bfloat16
