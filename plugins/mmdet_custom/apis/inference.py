"""A trained model from its config and checkpoint alone.

mmengine's runner loads ``load_from`` with ``strict=False`` and only logs
missing and unexpected keys, so a checkpoint of another architecture gives a
randomly initialised model that evaluates (and exports) without a word.
Here every load is strict: a checkpoint that leaves any model weight unset,
or brings weights the model does not have, is refused with the counts and a
few of the keys, unless the caller asks for a partial load.
"""
import logging
import os.path as osp
from typing import Optional, Union

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import init_default_scope

from plugins.utils import (StateDictMismatchError, describe_mismatch,
                           key_mismatch, safe_load_object, unwrap_state_dict)

#: What a user can do when a checkpoint does not match its config.
MISMATCH_HINT = (
    'pass the checkpoint trained with this config (or the config the '
    'checkpoint was trained with); to load only the matching weights and '
    'leave the rest as built, use --allow-partial (allow_partial=True)')


class CheckpointMismatchError(StateDictMismatchError):
    """A checkpoint whose keys or shapes do not fit the model built from the
    config (see :class:`plugins.utils.StateDictMismatchError`)."""


def detector_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / TTA wrappers (whose keys a checkpoint holds)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def load_model_checkpoint(model: torch.nn.Module,
                          checkpoint: str,
                          allow_partial: bool = False,
                          map_location: Union[str, torch.device] = 'cpu'
                          ) -> dict:
    """Load a checkpoint into a built model, refusing any mismatch.

    The file is read without running code (:func:`plugins.utils.
    safe_load_object`: ``.safetensors`` or a ``weights_only`` pickle; an
    mmengine checkpoint's ``state_dict`` and a DDP ``module.`` prefix are
    unwrapped).

    Args:
        model (nn.Module): the built model; a DDP or TTA wrapper is looked
            through.
        checkpoint (str): path of the weights file.
        allow_partial (bool): load only the keys whose names and shapes
            match and log what was left out, instead of raising. Default:
            False.
        map_location: where to read the tensors. Default: ``'cpu'``.

    Returns:
        dict: the checkpoint's ``meta`` entry (``{}`` when it has none).

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        plugins.utils.CheckpointError: unreadable or unsafe file.
        CheckpointMismatchError: missing, unexpected or shape-mismatched
            keys (counts and the first keys of each), unless
            ``allow_partial``. The keys are those left after the model's
            own load hooks; after this error the model's weights are
            partly loaded and should not be used.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    obj = safe_load_object(checkpoint, map_location)
    state = unwrap_state_dict(obj)
    target = detector_of(model)
    what = f"{type(target).__name__} (the config's model)"
    # Shapes first: load_state_dict raises on them even when not strict.
    _, _, mismatched = key_mismatch(target.state_dict(), state)
    if mismatched and allow_partial:
        state = {k: v for k, v in state.items()
                 if k not in {m[0] for m in mismatched}}
    elif mismatched:
        missing, unexpected, _ = key_mismatch(target.state_dict(), state)
        raise CheckpointMismatchError(
            describe_mismatch(missing, unexpected, mismatched, checkpoint,
                              what, MISMATCH_HINT),
            missing, unexpected, mismatched)
    # Missing/unexpected as the model sees them, after its own load hooks
    # (e.g. RegionRescoringDetector moves a bare detector's keys under
    # `detector.`).
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch after a load hook
        raise CheckpointMismatchError(
            f'checkpoint {checkpoint} does not match {what}: {err}\n'
            f'  hint: {MISMATCH_HINT}') from None
    missing = sorted(result.missing_keys)
    unexpected = sorted(result.unexpected_keys)
    if (missing or unexpected) and not allow_partial:
        raise CheckpointMismatchError(
            describe_mismatch(missing, unexpected, mismatched, checkpoint,
                              what, MISMATCH_HINT),
            missing, unexpected, mismatched)
    if missing or unexpected or mismatched:
        loaded = len(target.state_dict()) - len(missing) - len(mismatched)
        print_log(
            f'partial load of {checkpoint} (allow_partial): {loaded} of '
            f'{len(target.state_dict())} model tensors loaded; '
            f'{len(missing)} missing (e.g. {missing[:3]}), '
            f'{len(unexpected)} unexpected (e.g. {unexpected[:3]}), '
            f'{len(mismatched)} shape-mismatched (e.g. '
            f'{[m[0] for m in mismatched[:3]]}) left as built',
            logger='current', level=logging.WARNING)
    meta = obj.get('meta') if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _uses_our_attention_kernels(cfg: Config) -> bool:
    hooks = cfg.get('custom_hooks') or []
    return any(isinstance(h, dict) and h.get('type') in (
        'MSDeformAttentionHook', 'plugins.MSDeformAttentionHook')
        for h in hooks)


def _dataset_meta(cfg: Config, meta: dict) -> Optional[dict]:
    # The test dataset's classes first: tools/test.py labels its
    # predictions with them; a checkpoint's own meta is the fallback.
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset, dict) and 'dataset' in dataset \
            and 'metainfo' not in dataset:
        dataset = dataset['dataset']  # wrappers (RepeatDataset, ...)
    metainfo = dataset.get('metainfo') if isinstance(dataset, dict) else None
    if metainfo and metainfo.get('classes'):
        return dict(metainfo)
    if meta.get('dataset_meta'):
        return dict(meta['dataset_meta'])
    return None


def init_detector(config: Union[str, Config],
                  checkpoint: str,
                  device: Union[str, torch.device] = 'cpu',
                  cfg_options: Optional[dict] = None,
                  allow_partial: bool = False) -> torch.nn.Module:
    """Build the config's model and load a trained checkpoint into it.

    Nothing but the config and the checkpoint is read: ``init_weights`` is
    not called (it would load pretrained backbone files), the checkpoint
    supplies every weight and is checked strictly
    (:func:`load_model_checkpoint`). When the config runs mmdet's deformable
    attention on our kernels (``MSDeformAttentionHook`` in
    ``custom_hooks``), the model is switched as the runner's hook does, so
    it computes what ``tools/test.py`` computes.

    Args:
        config (str | Config): config file or a loaded config.
        checkpoint (str): the trained weights (``.pth`` from the runner or
            ``.safetensors``).
        device (str | torch.device): e.g. ``'cpu'``, ``'cuda'``,
            ``'cuda:1'``. Default: ``'cpu'``.
        cfg_options (dict, optional): overrides merged into the config
            (``--cfg-options`` style dotted keys).
        allow_partial (bool): accept a checkpoint that leaves weights unset
            (see :func:`load_model_checkpoint`). Default: False.

    Returns:
        nn.Module: the model in eval mode on ``device``, with ``model.cfg``
        (the merged config) and ``model.dataset_meta`` (``classes``,
        ``palette``; None when neither the config nor the checkpoint names
        them).

    Raises:
        FileNotFoundError: config or checkpoint missing.
        CheckpointMismatchError: the checkpoint does not fit the model.
    """
    if isinstance(config, (str, bytes)) or hasattr(config, '__fspath__'):
        config = str(config)
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file not found: {config}')
        config = Config.fromfile(config)
    elif not isinstance(config, Config):
        raise TypeError('config must be a file name or an mmengine Config, '
                        f'got {type(config).__name__}')
    if cfg_options:
        config.merge_from_dict(cfg_options)
    # the wing (plugins.mmdet_custom, this package's parent) registered
    # everything when it was imported; a missing local text-encoder
    # folder fails here, before the model is built (no hub retry)
    from ..engine.runner.cli import check_local_model_folders
    check_local_model_folders(config)
    init_default_scope(config.get('default_scope', 'mmdet'))
    from mmdet.registry import MODELS

    from ..models.layers import convert_ms_deform_attention
    model = MODELS.build(config.model)
    if _uses_our_attention_kernels(config):
        convert_ms_deform_attention(model)
    meta = load_model_checkpoint(model, checkpoint,
                                 allow_partial=allow_partial)
    model.dataset_meta = _dataset_meta(config, meta)
    model.cfg = config
    if torch.device(device).type == 'cpu':
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)
    model.to(device)
    model.eval()
    return model
