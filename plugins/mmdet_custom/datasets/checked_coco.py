"""COCO detection data whose annotation file is checked once, when loaded.

mmdet's ``CocoDataset`` trusts the file: a box with an infinite width is
kept and clipped to the image, an image whose recorded size disagrees with
the file gets targets in the wrong coordinates, boxes it cannot use
(negative or zero size, off the image, unknown category) vanish without a
word, and a broken file fails deep inside pycocotools or later (``need at
least one array to concatenate``).  :class:`CheckedCocoDataset` is
``CocoDataset`` plus those checks; every shipped detection config uses it.
"""
import logging
import math
import os.path as osp
from collections import Counter
from numbers import Real
from typing import List, Optional

from mmengine.logging import print_log
from PIL import Image

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS

from plugins.utils import read_json_object

#: What a COCO detection file must hold, per entry.
IMAGE_KEYS = ('id', 'file_name', 'width', 'height')
ANNOTATION_KEYS = ('id', 'image_id', 'bbox', 'category_id', 'area')
CATEGORY_KEYS = ('id', 'name')

#: EXIF orientations that swap width and height (decoders apply them).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_entries(name: str, data: dict, key: str, required) -> None:
    entries = data[key]
    if not isinstance(entries, list):
        raise ValueError(f'{name}: "{key}" must be a list, got a '
                         f'{type(entries).__name__}')
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f'{name}: {key}[{i}] must be an object, got '
                             f'{entry!r:.80}')
        missing = [k for k in required if k not in entry]
        if missing:
            ident = f' (id {entry["id"]})' if 'id' in entry else ''
            raise ValueError(f'{name}: {key}[{i}]{ident} has no '
                             f'{", ".join(map(repr, missing))}')


def read_coco_json(path: str, name: Optional[str] = None,
                   need_annotations: bool = True) -> dict:
    """Read and check a COCO detection annotation file.

    Checked: JSON syntax; one object with ``images``, ``categories`` and
    (unless ``need_annotations`` is False, e.g. a test-dev image list)
    ``annotations`` lists; at least one image; the keys of every entry
    (:data:`IMAGE_KEYS`, :data:`ANNOTATION_KEYS`, :data:`CATEGORY_KEYS`);
    unique image ids; positive finite image sizes; every ``bbox`` four
    finite numbers.

    Args:
        path (str): the file to read.
        name (str, optional): how errors name it (default ``path``).
        need_annotations (bool): require an ``annotations`` list.

    Returns:
        dict: the parsed file.

    Raises:
        ValueError: naming the file, what is wrong and where (the image
            id and annotation id for a box).
    """
    name = name or path
    data = read_json_object(
        path,
        name=name,
        expected='with "images", "annotations" and "categories"',
        hint=('a COCO annotation file is one object with "images", '
              '"annotations" and "categories" lists'))
    required = ['images', 'categories']
    if need_annotations:
        required.insert(1, 'annotations')
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f'{name}: no {" or ".join(map(repr, missing))} key (it has '
            f'{sorted(data)}); a COCO annotation file needs "images", '
            '"annotations" and "categories"')
    for key, keys in (('images', IMAGE_KEYS), ('categories', CATEGORY_KEYS),
                      ('annotations', ANNOTATION_KEYS)):
        if key in data:
            _check_entries(name, data, key, keys)
    if not data['images']:
        raise ValueError(f'{name}: "images" is empty: nothing to load')
    seen = set()
    for image in data['images']:
        if image['id'] in seen:
            raise ValueError(f'{name}: image id {image["id"]} appears twice '
                             'in "images"')
        seen.add(image['id'])
        for key in ('width', 'height'):
            value = image[key]
            if not _is_number(value) or not math.isfinite(value) or \
                    value <= 0:
                raise ValueError(f'{name}: image id {image["id"]} has '
                                 f'{key} {value!r}; expected a positive '
                                 'number of pixels')
    for ann in data.get('annotations', ()):
        bbox = ann['bbox']
        where = f'{name}: image id {ann["image_id"]}, annotation id ' \
            f'{ann["id"]}'
        if not isinstance(bbox, list) or len(bbox) != 4 or \
                not all(map(_is_number, bbox)):
            raise ValueError(f'{where}: bbox {bbox!r:.80} is not four numbers '
                             '[x, y, width, height]')
        if not all(map(math.isfinite, bbox)):
            raise ValueError(f'{where}: bbox {bbox} is not finite (NaN or '
                             'infinite); fix or remove the annotation')
    return data


def _file_size(path: str):
    """``(width, height)`` of an image file as decoders return it (EXIF
    rotation applied), and the stored size; None if it cannot be read."""
    try:
        with Image.open(path) as img:
            size = img.size
            orientation = img.getexif().get(0x0112)
    except OSError:
        return None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return size[::-1], size
    return size, size


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` with its annotation file checked on load.

    Errors (``ValueError`` naming the annotation file, the image id and
    the annotation ids): the file's structure (:func:`read_coco_json`:
    JSON syntax, missing ``images``/``annotations``/``categories`` or
    keys, no images), a box that is not four finite numbers, and an image
    whose ``width``/``height`` disagree with the image file (when
    ``check_image_sizes``; the file's header is read, EXIF rotation
    allowed for).

    Annotations mmdet drops (width or height below 1 px or area <= 0,
    nothing inside the image, a category not in ``classes``, an
    ``image_id`` naming no image) are counted, by reason, in one warning
    line per file.

    Args:
        check_image_sizes (bool): compare each image's recorded size with
            its file. Defaults to True.
        **kwargs: mmdet's ``CocoDataset`` arguments.

    Example (in a config, as ``configs/_base_/datasets/toy_detection.py``)::

        train_dataloader = dict(dataset=dict(
            type='CheckedCocoDataset', data_root='data/toy/',
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='images/train/'),
            metainfo=dict(classes=('circle', 'square', 'triangle'))))
    """

    def __init__(self, *args, check_image_sizes: bool = True, **kwargs):
        self.check_image_sizes = check_image_sizes
        self._dropped = Counter()
        self._dropped_categories = set()
        self._num_annotations = 0
        super().__init__(*args, **kwargs)

    # mmdet's CocoDataset.load_data_list builds its COCO index with
    # `self.COCOAPI(local_path)`; as a method, the file is read and checked
    # once, and errors name the configured ann_file.
    def COCOAPI(self, local_path: str) -> COCO:  # noqa: N802
        data = read_coco_json(local_path, name=self.ann_file,
                              need_annotations=not self.test_mode)
        image_ids = {image['id'] for image in data['images']}
        annotations = data.get('annotations', [])
        self._num_annotations = len(annotations)
        self._dropped['name an image id not in "images"'] = sum(
            ann['image_id'] not in image_ids for ann in annotations)
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        # mmdet's wrapper keeps these aliases of pycocotools' indexes.
        coco.img_ann_map = coco.imgToAnns
        coco.cat_img_map = coco.catToImgs
        return coco

    def load_data_list(self) -> List[dict]:
        self._dropped = Counter()
        self._dropped_categories = set()
        data_list = super().load_data_list()
        self._report_dropped()
        return data_list

    def parse_data_info(self, raw_data_info: dict):
        img = raw_data_info['raw_img_info']
        anns = raw_data_info['raw_ann_info']
        data_info = super().parse_data_info(raw_data_info)
        if self.check_image_sizes:
            self._check_image_size(img, anns, data_info['img_path'])
        kept = len(data_info['instances'])
        considered = [ann for ann in anns if not ann.get('ignore', False)]
        reasons = [self._drop_reason(ann, img) for ann in considered]
        dropped = [r for r in reasons if r is not None]
        for reason in dropped:
            self._dropped[reason] += 1
        # The count is mmdet's own; the reasons explain it.
        unexplained = len(considered) - kept - len(dropped)
        if unexplained > 0:
            self._dropped['dropped by mmdet for another reason'] += \
                unexplained
        return data_info

    def _drop_reason(self, ann: dict, img: dict) -> Optional[str]:
        """Why mmdet's ``parse_data_info`` leaves ``ann`` out (its tests,
        one reason each), or None when it is kept."""
        x1, y1, w, h = ann['bbox']
        if ann['area'] <= 0 or w < 1 or h < 1:
            return 'have a width or height below 1 px or area <= 0'
        inside_w = min(x1 + w, img['width']) - max(x1, 0)
        inside_h = min(y1 + h, img['height']) - max(y1, 0)
        if inside_w <= 0 or inside_h <= 0:
            return 'lie outside their image'
        if ann['category_id'] not in self.cat_ids:
            self._dropped_categories.add(ann['category_id'])
            return 'have a category not in classes'
        return None

    def _check_image_size(self, img: dict, anns: list, path: str) -> None:
        if not osp.isfile(path):  # remote storage or a missing file:
            return  # the loading transform names a missing one
        sizes = _file_size(path)
        if sizes is None:
            return
        recorded = (img['width'], img['height'])
        if recorded in sizes:
            return
        ids = [ann['id'] for ann in anns]
        raise ValueError(
            f'{self.ann_file}: image id {img["img_id"]} ({path}) is '
            f'{recorded[0]}x{recorded[1]} (width x height) in the '
            f'annotation file but {sizes[0][0]}x{sizes[0][1]} in the image '
            f'file; its {len(ids)} annotation(s) (ids {ids[:10]}'
            f'{" ..." if len(ids) > 10 else ""}) would become wrong '
            'targets. Fix width/height in the annotation file or use '
            'check_image_sizes=False to skip this check')

    def _report_dropped(self) -> None:
        total = sum(self._dropped.values())
        if not total:
            return
        parts = [f'{n} {reason}' for reason, n in self._dropped.items() if n]
        if self._dropped_categories:
            parts = [p + f' (category ids {sorted(self._dropped_categories)}'
                     f', classes {list(self.metainfo["classes"])})'
                     if 'category' in p else p for p in parts]
        print_log(f'{self.ann_file}: {total} of {self._num_annotations} '
                  f'annotations are not used: {"; ".join(parts)}',
                  logger='current', level=logging.WARNING)
