"""resample_pos_embed: shapes, prefix tokens, agreement with timm."""
import pytest
import torch

from plugins.utils import resample_pos_embed


@pytest.mark.parametrize('leading', [(), (1, )])
def test_same_grid_is_identity(leading):
    pos = torch.randn(*leading, 1 + 14 * 14, 8)
    assert resample_pos_embed(pos, (14, 14), (14, 14)) is pos


@pytest.mark.parametrize('leading', [(), (1, )])
@pytest.mark.parametrize('new', [(20, 30), (3, 5), (14, 14)])
def test_shapes_and_prefix_kept(leading, new):
    pos = torch.randn(*leading, 2 + 14 * 14, 8)
    out = resample_pos_embed(pos, new, (14, 14), num_prefix_tokens=2)
    assert out.shape == (*leading, 2 + new[0] * new[1], 8)
    assert torch.equal(out[..., :2, :], pos[..., :2, :])


def test_matches_timm_resample():
    from timm.layers import resample_abs_pos_embed
    pos = torch.randn(1, 1 + 10 * 10, 16)
    for new in [(14, 14), (6, 9)]:
        ours = resample_pos_embed(pos, new, (10, 10), num_prefix_tokens=1)
        ref = resample_abs_pos_embed(
            pos, new_size=new, old_size=(10, 10), num_prefix_tokens=1)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_half_precision_and_gradient():
    pos = torch.randn(1 + 4, 8, dtype=torch.float16, requires_grad=True)
    out = resample_pos_embed(pos, (3, 3), (2, 2))
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert pos.grad is not None


def test_wrong_token_count():
    with pytest.raises(ValueError, match='spatial tokens'):
        resample_pos_embed(torch.randn(51, 8), (4, 4), (7, 7))
