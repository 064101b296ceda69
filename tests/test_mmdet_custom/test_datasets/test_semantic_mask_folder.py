import numpy as np
import pytest
from PIL import Image

from plugins.mmdet_custom.datasets import (LoadSemanticMask, PackSemSegInputs,
                              SemanticMaskFolderDataset)

CLASSES = ('background', 'circle', 'square', 'triangle')


def make_dataset(root, split='train', **kwargs):
    return SemanticMaskFolderDataset(
        data_root=str(root),
        data_prefix=dict(img_path=f'images/{split}',
                         seg_map_path=f'semantic/{split}'),
        metainfo=dict(classes=CLASSES), **kwargs)


def test_lists_image_mask_pairs(toy_data_root):
    ds = make_dataset(toy_data_root)
    assert len(ds) == 8 and len(make_dataset(toy_data_root, 'val')) == 4
    info = ds[0]
    assert info['img_path'].endswith('images/train/000000.png')
    assert info['seg_map_path'].endswith('semantic/train/000000.png')
    assert ds.metainfo['classes'] == CLASSES


def test_pipeline_packs_image_and_mask(toy_data_root):
    ds = make_dataset(toy_data_root, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadSemanticMask'),
        dict(type='RandomFlip', prob=1.0), dict(type='PackSemSegInputs')])
    out = ds[0]
    inputs, sample = out['inputs'], out['data_samples']
    assert inputs.shape == (3, 128, 128) and str(inputs.dtype) == 'torch.uint8'
    mask = sample.gt_sem_seg.sem_seg
    assert mask.shape == (1, 128, 128)
    raw = np.array(Image.open(ds.get_data_info(0)['seg_map_path']))
    # flipped along with the image
    np.testing.assert_array_equal(mask[0].numpy(), raw[:, ::-1])
    assert set(np.unique(raw)) <= {0, 1, 2, 3} and raw.max() > 0
    assert sample.metainfo['flip'] is True
    assert sample.metainfo['ignore_index'] == 255


def test_reduce_zero_label(tmp_path):
    path = tmp_path / 'm.png'
    Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8)).save(path)
    out = LoadSemanticMask(reduce_zero_label=True)(dict(seg_map_path=path))
    np.testing.assert_array_equal(out['gt_seg_map'], [[255, 0], [1, 255]])
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match='single-channel'):
        LoadSemanticMask()(dict(seg_map_path=path))
    assert 'meta_keys' in repr(PackSemSegInputs())


def test_clear_errors(toy_data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        make_dataset(tmp_path)
    (tmp_path / 'images' / 'train').mkdir(parents=True)
    (tmp_path / 'semantic' / 'train').mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        tmp_path / 'images' / 'train' / 'a.png')
    with pytest.raises(FileNotFoundError, match='1 of 1 images .* no mask'):
        make_dataset(tmp_path)
    with pytest.raises(ValueError, match='classes'):
        SemanticMaskFolderDataset(
            data_root=str(toy_data_root),
            data_prefix=dict(img_path='images/val',
                             seg_map_path='semantic/val'))


def test_configs_parse(repo_root):
    from mmengine.config import Config
    full = Config.fromfile(
        str(repo_root / 'configs/vpt_tpt/vpt4-tpt4_biomedclip-vitb16_seg.py'))
    assert full.model.type == 'VPTTPTSemanticSegmentor'
    assert full.model.segmentor.model_name == \
        'BiomedCLIP-PubMedBERT_256-vit_base_patch16_224'
    assert (full.model.segmentor.num_visual_prompts,
            full.model.segmentor.num_text_prompts) == (4, 4)
    assert full.custom_imports.imports == ['plugins.mmdet_custom']
    assert full.default_hooks.visualization.type == 'SemSegVisualizationHook'
    demo = Config.fromfile(
        str(repo_root / 'configs/_demo_/vpt4-tpt4_biomedclip-tiny_toy-semantic.py'))
    assert demo.model.segmentor.model_name == 'BiomedCLIP-Tiny-test'
    assert demo.model.class_names == CLASSES
    assert demo.train_dataloader.dataset.data_root == 'data/toy/'
