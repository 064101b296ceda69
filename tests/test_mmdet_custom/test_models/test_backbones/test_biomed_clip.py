"""BiomedCLIPBackbone: parity with its timm trunk, shapes, freezing,
weights."""
import pytest
import torch
from mmdet.registry import MODELS

from plugins.mmdet_custom.models.backbones import BiomedCLIPBackbone
from plugins.models import BIOMEDCLIP_TINY_MODEL_NAME
from plugins.utils import StateDictMismatchError
from tests.helpers import randn_images

# timm test_vit trunk (64 wide, 6 blocks, 160 px) + 2-layer BERT
TINY = BIOMEDCLIP_TINY_MODEL_NAME


def _trunk_map(trunk, x, index):
    return trunk.forward_intermediates(
        x, indices=[index], norm=True, intermediates_only=True)[-1]


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return BiomedCLIPBackbone(TINY).eval()


def test_parity_biomedclip_vit_b_16_with_timm_trunk():
    """The acceptance check on BiomedCLIP's real image tower (random)."""
    torch.manual_seed(0)
    backbone = BiomedCLIPBackbone().eval()
    assert backbone.trunk.embed_dim == 768 and backbone.num_blocks == 12
    x = randn_images(224, 224, batch=1)
    with torch.no_grad():
        ours = backbone(x)
        ref = _trunk_map(backbone.trunk, x, 11)
    assert ours[0].shape == (1, 768, 14, 14)
    torch.testing.assert_close(ours[0], ref, rtol=0, atol=1e-5)
    assert backbone.proj_dims == 512


@pytest.mark.parametrize('size', [(160, 160), (224, 224), (96, 128)])
def test_parity_tiny_with_timm_dynamic_size(tiny, size):
    """test_vit resamples its own pos-embed at other sizes: ours agrees."""
    x = randn_images(*size)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny(x)[0], _trunk_map(tiny.trunk, x, 5), rtol=0, atol=1e-5)


@pytest.mark.parametrize('size,grid', [((224, 224), (14, 14)),
                                       ((320, 480), (20, 30)),
                                       ((33, 17), (3, 2))])
def test_output_shapes(tiny, size, grid):
    with torch.no_grad():
        assert [tuple(o.shape) for o in tiny(randn_images(*size))] == \
            [(2, 64, *grid)]


def test_with_proj_uses_the_clip_head(tiny):
    model = BiomedCLIPBackbone(TINY, with_proj=True).eval()
    model.load_state_dict(tiny.state_dict())
    x = randn_images(64, 64)
    with torch.no_grad():
        out = model(x)[0]
        ref = tiny(x)[0].permute(0, 2, 3, 1) @ \
            tiny.visual.head.proj.weight.T
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2))


def test_frozen():
    model = BiomedCLIPBackbone(TINY, frozen=True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_train_last_n_blocks_trains_exactly_the_last_two():
    model = BiomedCLIPBackbone(TINY, train_last_n_blocks=2)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(('visual.trunk.blocks.4.', 'visual.trunk.blocks.5.',
                         'visual.trunk.norm.'))
    }
    model(randn_images(32, 32))[0].sum().backward()


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_weights_round_trip(tiny_biomedclip_files, fmt):
    model, files = tiny_biomedclip_files
    backbone = BiomedCLIPBackbone(TINY, pretrained=str(files[fmt])).eval()
    backbone.init_weights()  # the runner's call before training
    ref = {'visual.' + k: v for k, v in model.visual.state_dict().items()}
    assert set(backbone.state_dict()) == set(ref) | {'activation'}
    for key, value in ref.items():
        assert torch.equal(backbone.state_dict()[key], value), key
    x = randn_images(160, 160)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone(x)[0],
            _trunk_map(model.visual.trunk, x, 5),
            rtol=0,
            atol=0)


def test_weights_from_biomedclip_folder(tiny_biomedclip_files):
    model, files = tiny_biomedclip_files
    folder = files['bin'].parent  # holds open_clip_pytorch_model.bin
    backbone = BiomedCLIPBackbone(TINY, pretrained=str(folder))
    backbone.init_weights()
    assert torch.equal(backbone.visual.head.proj.weight,
                       model.visual.head.proj.weight)


def test_wrong_layout_lists_keys(tmp_path, tiny_biomedclip_files):
    model, _ = tiny_biomedclip_files
    # a bare timm state dict lacks open_clip's 'trunk.' / 'head.' nesting
    torch.save(model.visual.trunk.state_dict(), tmp_path / 'timm.bin')
    with pytest.raises(StateDictMismatchError) as info:
        BiomedCLIPBackbone(
            TINY, pretrained=str(tmp_path / 'timm.bin')).init_weights()
    msg = str(info.value)
    assert 'missing keys: [visual.head.proj.weight, visual.trunk.' in msg
    assert 'unexpected keys: [visual.blocks.0.' in msg


def test_registered_and_bad_inputs(tiny):
    model = MODELS.build(dict(type='BiomedCLIPBackbone', model_name=TINY))
    assert isinstance(model, BiomedCLIPBackbone)
    assert model.patch_size == 16
    with pytest.raises(ValueError, match='smaller than one'):
        tiny(randn_images(15, 200))
    with pytest.raises(ValueError, match='NaN'):
        tiny(torch.full((1, 3, 32, 32), float('nan')))
    with pytest.raises(TypeError, match='OpenCLIPBackbone'):
        BiomedCLIPBackbone('ViT-Tiny-16-test')


def test_siglip_timm_trunk_without_class_token():
    """Any open_clip timm ViT works: SigLIP has no class token and an
    attention-pool head, which stays unused and frozen."""
    torch.manual_seed(0)
    model = BiomedCLIPBackbone('ViT-B-16-SigLIP').eval()
    assert model.num_prefix_tokens == 0
    assert model.mean == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in model.trunk.attn_pool.parameters())
    x = randn_images(224, 224, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x)[0], _trunk_map(model.trunk, x, 11), rtol=0, atol=1e-5)
        assert model(randn_images(64, 80, batch=1))[0].shape == (1, 768, 4, 5)
    with pytest.raises(ValueError, match='no per-token projection'):
        BiomedCLIPBackbone('ViT-B-16-SigLIP', with_proj=True)
