"""Semantic segmentation from two folders: images and per-pixel class masks.

``data_root/<img_path>/NAME<img_suffix>`` pairs with
``data_root/<seg_map_path>/NAME<seg_suffix>``, a single-channel PNG whose
value is the class index (the toy data's ``semantic/`` folders, or any
medical dataset exported the same way).  Two transforms complete the
pipeline: :class:`LoadSemanticMask` reads the mask, :class:`PackSemSegInputs`
packs image and mask into ``inputs`` / ``DetDataSample.gt_sem_seg``.  mmdet's
geometric transforms (``RandomFlip``, ``Resize``) already move ``gt_seg_map``
along with the image.
"""
import os
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.structures import PixelData
from PIL import Image

from mmdet.registry import DATASETS, TRANSFORMS
from mmdet.structures import DetDataSample


@DATASETS.register_module()
class SemanticMaskFolderDataset(BaseDataset):
    """Images with same-named class-index masks, no annotation file.

    Args:
        data_root (str): root folder.
        data_prefix (dict): ``img_path`` (images) and ``seg_map_path``
            (masks) folders under ``data_root``.
        metainfo (dict): ``classes`` in mask-value order (index 0 is usually
            ``'background'``) and an optional ``palette`` of RGB triples.
        img_suffix (str): image file ending. Defaults to ``'.png'``.
        seg_suffix (str): mask file ending. Defaults to ``'.png'``.
        ignore_index (int): mask value excluded from losses and metrics.
            Defaults to 255.
        **kwargs: the rest of mmengine's ``BaseDataset`` (``pipeline``,
            ``test_mode``, ``indices`` ...).

    Example:
        >>> ds = SemanticMaskFolderDataset(
        ...     data_root='data/toy',
        ...     data_prefix=dict(img_path='images/val',
        ...                      seg_map_path='semantic/val'),
        ...     metainfo=dict(classes=('background', 'circle', 'square',
        ...                            'triangle')))
        >>> sorted(ds[0])  # before a pipeline: the file paths
        ['ignore_index', 'img_id', 'img_path', 'sample_idx', 'seg_map_path']
    """

    METAINFO = dict(classes=None, palette=None)

    def __init__(self,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path='', seg_map_path=''),
                 img_suffix: str = '.png',
                 seg_suffix: str = '.png',
                 ignore_index: int = 255,
                 **kwargs) -> None:
        self.img_suffix = img_suffix
        self.seg_suffix = seg_suffix
        self.ignore_index = ignore_index
        super().__init__(data_root=data_root, data_prefix=data_prefix,
                         **kwargs)
        if not self.metainfo.get('classes'):
            raise ValueError('SemanticMaskFolderDataset needs '
                             'metainfo=dict(classes=(...)) in mask-value '
                             'order')

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img_path', '')
        seg_dir = self.data_prefix.get('seg_map_path', '')
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f'image folder {img_dir} does not exist')
        names = sorted(f for f in os.listdir(img_dir)
                       if f.endswith(self.img_suffix))
        if not names:
            raise FileNotFoundError(
                f'no *{self.img_suffix} images in {img_dir}')
        data_list, missing = [], []
        for name in names:
            stem = name[:-len(self.img_suffix)]
            seg_path = osp.join(seg_dir, stem + self.seg_suffix)
            if not osp.isfile(seg_path):
                missing.append(seg_path)
                continue
            data_list.append(dict(
                img_path=osp.join(img_dir, name), seg_map_path=seg_path,
                img_id=stem, ignore_index=self.ignore_index))
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} of {len(names)} images in {img_dir} have no '
                f'mask in {seg_dir}, e.g. {missing[0]}')
        return data_list


@TRANSFORMS.register_module()
class LoadSemanticMask(BaseTransform):
    """Read ``results['seg_map_path']`` into ``results['gt_seg_map']``.

    The mask is a single-channel image of class indices (``uint8`` or
    ``uint16`` PNG); colour masks are refused rather than guessed.

    Args:
        reduce_zero_label (bool): subtract 1 from every label and map 0 to
            ``ignore_index`` (for masks whose 0 means "unlabelled").
            Defaults to False.
        ignore_index (int, optional): defaults to ``results['ignore_index']``
            or 255.
    """

    def __init__(self, reduce_zero_label: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        path = results['seg_map_path']
        with Image.open(path) as mask_img:
            mask = np.array(mask_img)
        if mask.ndim != 2:
            raise ValueError(f'mask {path} has shape {mask.shape}: expected a '
                             'single-channel class-index image')
        ignore = self.ignore_index
        if ignore is None:
            ignore = results.get('ignore_index', 255)
        mask = mask.astype(np.int64)
        if self.reduce_zero_label:
            mask = np.where((mask == 0) | (mask == ignore), ignore, mask - 1)
        results['gt_seg_map'] = mask.astype(np.uint8 if mask.max(
            initial=0) < 256 else np.int32)
        results['ignore_index'] = ignore
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(reduce_zero_label='
                f'{self.reduce_zero_label}, ignore_index={self.ignore_index})')


@TRANSFORMS.register_module()
class PackSemSegInputs(BaseTransform):
    """Pack the image and its mask for a semantic segmentor.

    ``inputs``: the image as a ``(3, H, W)`` uint8 tensor (channel order as
    loaded: BGR from mmcv's ``LoadImageFromFile``); ``data_samples``: a
    ``DetDataSample`` with ``gt_sem_seg.sem_seg`` ``(1, H, W)`` (when a mask
    was loaded) and the meta keys below.

    Args:
        meta_keys (Sequence[str]): keys of ``results`` copied into the
            sample's metainfo when present.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = (
                     'img_id', 'img_path', 'seg_map_path', 'ori_shape',
                     'img_shape', 'scale_factor', 'flip', 'flip_direction',
                     'ignore_index')) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        inputs = torch.from_numpy(
            np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample = DetDataSample()
        if 'gt_seg_map' in results:
            mask = torch.from_numpy(
                np.ascontiguousarray(results['gt_seg_map'])).long()[None]
            sample.gt_sem_seg = PixelData(sem_seg=mask)
        sample.set_metainfo(
            {k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
