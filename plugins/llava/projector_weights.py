"""Load ``mm_projector`` weights (PSALM's ``pretrain_mm_mlp_adapter``)."""
from typing import Dict, NamedTuple

import torch
import torch.nn as nn

from plugins.utils import safe_load

#: Prefixes PSALM/LLaVA checkpoints put before projector keys.
PROJECTOR_PREFIXES = ('model.mm_projector.', 'mm_projector.')


class LoadResult(NamedTuple):
    loaded: list
    missing: list
    unexpected: list


def strip_projector_prefix(state: Dict[str, torch.Tensor]
                           ) -> Dict[str, torch.Tensor]:
    """Keep a checkpoint's projector entries, without their prefix.

    A file that has ``mm_projector.`` keys keeps only those (a full model
    checkpoint); one without any is taken as a bare projector state dict.
    """
    for prefix in PROJECTOR_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()
                    if k.startswith(prefix)}
    return dict(state)


def load_projector_weights(projector: nn.Module, path: str,
                           strict: bool = True) -> LoadResult:
    """Load a projector file into ``projector``, refusing silent no-ops.

    PSALM loads ``pretrain_mm_mlp_adapter`` with ``strict=False``, so a file
    whose names do not match loads *nothing* and training silently starts
    from scratch.  Here a file from which no key loads is always an error,
    and ``strict=True`` also refuses missing/unexpected keys or shape
    mismatches, naming them.

    Returns:
        LoadResult: keys loaded, missing, unexpected.
    """
    state = strip_projector_prefix(safe_load(path))
    own = projector.state_dict()
    shape_errors = [f'{k}: file {tuple(v.shape)} vs model '
                    f'{tuple(own[k].shape)}' for k, v in state.items()
                    if k in own and own[k].shape != v.shape]
    loaded = sorted(k for k in state if k in own and k not in
                    {e.split(':')[0] for e in shape_errors})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if not loaded:
        raise ValueError(
            f'{path}: no key matches the {type(projector).__name__} '
            f'projector (file keys e.g. {sorted(state)[:5]}, model keys e.g. '
            f'{sorted(own)[:5]}); convert it with '
            'tools/adapt_pretrain_to_deformable.py')
    if shape_errors or (strict and (missing or unexpected)):
        raise ValueError(
            f'{path}: projector weights do not match: missing {missing}, '
            f'unexpected {unexpected}, shape mismatches {shape_errors}')
    projector.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return LoadResult(loaded, missing, unexpected)
