"""Run a built model on single images the way ``tools/test.py`` runs it on a
dataset: the config's own test pipeline, the model's own ``test_step``."""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import init_default_scope

#: Transforms of a test pipeline that read ground truth; a new image has
#: none, and they change no prediction, so inference drops them.
GT_LOADERS = ('LoadAnnotations', 'LoadPanopticAnnotations',
              'LoadSemanticMask', 'LoadTrackAnnotations')
#: Image loaders a test pipeline may start with (mmcv's and mmdet's).
FILE_LOADERS = ('LoadImageFromFile', 'LoadImageFromNDArray')


def _type_name(transform: dict) -> str:
    kind = transform.get('type', '')
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return name.split('.')[-1]


def test_pipeline_cfg(cfg: Config) -> List[dict]:
    """The config's test pipeline without ground-truth loaders.

    Read from ``test_dataloader.dataset.pipeline`` (looking through dataset
    wrappers such as ``RepeatDataset``), as ``tools/test.py`` uses it.

    Raises:
        KeyError: the config has no test pipeline, or it does not start
            with an image loader (named with the first transform found).
    """
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset, dict) and 'pipeline' not in dataset \
            and 'dataset' in dataset:
        dataset = dataset['dataset']
    pipeline = dataset.get('pipeline') if isinstance(dataset, dict) else None
    if not pipeline:
        raise KeyError(f'{cfg.filename}: no test_dataloader.dataset.pipeline '
                       '(inference runs the config\'s test pipeline)')
    pipeline = [copy.deepcopy(dict(t)) for t in pipeline
                if _type_name(t) not in GT_LOADERS]
    if _type_name(pipeline[0]) not in FILE_LOADERS:
        raise KeyError(f'{cfg.filename}: the test pipeline starts with '
                       f'{pipeline[0].get("type")!r}, not an image loader '
                       f'({" or ".join(FILE_LOADERS)})')
    return pipeline


def detector_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / TTA wrappers."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def needs_text_prompt(model: torch.nn.Module) -> bool:
    """Whether the model reads a text prompt (GroundingDINO and kin)."""
    return hasattr(detector_of(model), 'language_model')


def parse_text_prompt(texts: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``'a . b c .'`` (GroundingDINO's caption style) or a list -> the
    entity names ``('a', 'b c')``.

    Raises:
        ValueError: no name in ``texts``.
    """
    if isinstance(texts, str):
        texts = texts.split('.')
    names = tuple(t.strip() for t in texts if t.strip())
    if not names:
        raise ValueError(f'--texts {texts!r} holds no class name (separate '
                         'names with " . ", e.g. "circle . square")')
    return names


class Predictor:
    """Predict with a model on images given as files or arrays.

    Each image goes through the config's test pipeline (the file loader for
    paths, mmdet's ``LoadImageFromNDArray`` with the same arguments for
    arrays, e.g. video frames); :meth:`predict` collates samples as the test
    dataloader does and calls ``model.test_step``, so the predictions are
    those of ``tools/test.py``. Batch composition never changes a
    prediction: samples whose padded shapes differ run in separate
    forward passes (the data preprocessor pads a batch to its largest
    image, which a ViT backbone would see).

    Args:
        model (nn.Module): from :func:`init_detector` (``model.cfg`` set).
        texts (str | Sequence[str], optional): class prompt of a
            text-prompted model (``'a . b'`` or a list); default: the
            dataset's class names, as ``tools/test.py`` prompts it.
    """

    def __init__(self, model: torch.nn.Module,
                 texts: Union[str, Sequence[str], None] = None) -> None:
        self.model = model
        cfg = model.cfg
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        pipeline = test_pipeline_cfg(cfg)
        loader = pipeline[0]
        array_loader = dict(loader, type='mmdet.LoadImageFromNDArray')
        self.file_loader = Compose([loader])
        self.array_loader = Compose([array_loader])
        self.transforms = Compose(pipeline[1:])
        names = tuple((getattr(detector_of(model), 'dataset_meta', None)
                       or getattr(model, 'dataset_meta', None) or {}).get(
                           'classes') or ())
        self.text: Optional[Tuple[str, ...]] = None
        if needs_text_prompt(model):
            self.text = parse_text_prompt(texts) if texts else names
            if not self.text:
                raise ValueError(
                    f'{cfg.filename}: the model takes a text prompt but '
                    'neither --texts nor the config\'s dataset names classes')
            names = self.text
        elif texts:
            kind = type(detector_of(model)).__name__
            raise ValueError(f'--texts given, but {kind} takes no text '
                             'prompt')
        #: Class names the labels index.
        self.class_names: Tuple[str, ...] = names
        self.pad_divisor = int(getattr(model.data_preprocessor,
                                       'pad_size_divisor', 1) or 1)

    def load(self, image: Union[str, np.ndarray], img_id: int = 0) -> dict:
        """Read an image (path) or wrap an array ``(H, W, 3)`` BGR uint8.

        Returns:
            dict: the loader's results; ``results['img']`` is the original
            image.

        Raises:
            Exception: whatever the loader raises for an unreadable file.
        """
        if isinstance(image, np.ndarray):
            results = self.array_loader(dict(img=image, img_id=img_id))
        else:
            results = self.file_loader(dict(img_path=str(image),
                                            img_id=img_id))
        if results is None or results.get('img') is None:
            raise ValueError(f'could not read image {image}')
        return results

    def prepare(self, loaded: dict) -> Dict[str, Any]:
        """The rest of the test pipeline on :meth:`load`'s results."""
        results = dict(loaded)
        if self.text is not None:
            # as CocoDataset(return_classes=True) gives them to tools/test.py
            results['text'] = self.text
            results['custom_entities'] = True
        return self.transforms(results)

    def _shape_key(self, sample: Dict[str, Any]) -> Tuple[int, int]:
        height, width = sample['inputs'].shape[-2:]
        d = self.pad_divisor
        return (-(-height // d) * d, -(-width // d) * d)

    @torch.no_grad()
    def predict(self, samples: Sequence[Dict[str, Any]]) -> list:
        """``model.test_step`` on prepared samples, in their order.

        Args:
            samples: :meth:`prepare` outputs (``inputs`` ``(3, H, W)`` uint8,
                ``data_samples``).

        Returns:
            list: one data sample per input, with ``pred_instances``
            (boxes in original-image pixels) or ``pred_sem_seg``.
        """
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, sample in enumerate(samples):
            groups.setdefault(self._shape_key(sample), []).append(i)
        outputs: List[Any] = [None] * len(samples)
        for indices in groups.values():
            batch = dict(inputs=[samples[i]['inputs'] for i in indices],
                         data_samples=[samples[i]['data_samples']
                                       for i in indices])
            for i, out in zip(indices, self.model.test_step(batch)):
                outputs[i] = out
        return outputs
