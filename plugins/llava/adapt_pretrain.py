"""Turn a baseline ``swin_conv`` adapter into a ``deformable`` initialisation."""
from types import SimpleNamespace
from typing import Dict, List, NamedTuple, Tuple

import torch

from plugins.layers import (DEFAULT_HIDDEN_DIM, DEFAULT_NUM_HEADS,
                            DEFAULT_NUM_POINTS)

from .projector_builder import (DEFAULT_NUM_TOKENS, SwinConvProjector,
                                build_deformable_projector)
from .projector_weights import strip_projector_prefix

#: ``swin_conv`` key -> ``deformable`` key: ``fc``, the LLM-facing Linear of
#: PSALM's ``swin_conv`` (2048 -> LLM width), has the same role and shape as
#: the last Linear of the deformable projector's output head.  Nothing else
#: of ``swin_conv`` (its stride-2 BasicBlock ``layer1.0.*``) has a
#: counterpart.
SWIN_CONV_TO_DEFORMABLE = {
    'fc.weight': 'output_proj.2.weight',
    'fc.bias': 'output_proj.2.bias',
}


def swin_conv_keys() -> List[str]:
    """Every state-dict key of PSALM's ``swin_conv`` projector (parameters
    and BatchNorm buffers; PSALM's trainer saves only the parameters)."""
    with torch.device('meta'):
        return sorted(SwinConvProjector(8, 8, mid_channels=8).state_dict())


class AdaptReport(NamedTuple):
    transferred: List[Tuple[str, str, tuple]]
    initialised: List[Tuple[str, tuple]]
    dropped: List[Tuple[str, tuple, str]]


def check_swin_conv_layout(source: Dict[str, torch.Tensor]) -> None:
    """Refuse a file that is not a ``swin_conv`` projector, naming what it
    holds (e.g. an already converted file, or PSALM's ``conv`` type)."""
    known = set(swin_conv_keys())
    unknown = sorted(set(source) - known)
    if not source or unknown or 'fc.weight' not in source:
        raise ValueError(
            'not a swin_conv projector (PSALM ResNetSwin layout: '
            "'layer1.0.{conv1,bn1,conv2,bn2}.*', 'layer1.0.downsample."
            "{0,1}.*', 'fc.{weight,bias}', with or without the "
            "'model.mm_projector.' / 'mm_projector.' prefix): "
            f'{len(source)} keys after stripping the prefix, '
            f'{len(unknown)} unknown (e.g. {unknown[:5]}), '
            f"'fc.weight' {'present' if 'fc.weight' in source else 'absent'}")


def adapt_swin_conv_state(source: Dict[str, torch.Tensor], *,
                          projector_outdim: int, swin_type: str = 'base',
                          mm_hidden_dim: int = DEFAULT_HIDDEN_DIM,
                          mm_n_heads: int = DEFAULT_NUM_HEADS,
                          mm_n_points: int = DEFAULT_NUM_POINTS,
                          mm_num_tokens: int = DEFAULT_NUM_TOKENS,
                          mm_num_layers: int = 2, seed: int = 0):
    """Initial ``deformable`` projector weights from a ``swin_conv`` file.

    Builds the deformable projector (fresh, seeded initialisation), copies
    every source tensor that maps onto it with the same shape, and reports
    what was transferred, newly initialised and dropped.

    Raises:
        ValueError: the file is not in PSALM's ``swin_conv`` layout, or
            nothing could be transferred (e.g. ``fc`` has another output
            width than ``projector_outdim``).

    Returns:
        tuple: ``(state_dict, AdaptReport)``.
    """
    source = strip_projector_prefix(source)
    check_swin_conv_layout(source)
    torch.manual_seed(seed)
    projector = build_deformable_projector(SimpleNamespace(
        mm_projector_type='deformable', swin_type=swin_type,
        projector_outdim=projector_outdim, mm_hidden_dim=mm_hidden_dim,
        mm_n_heads=mm_n_heads, mm_n_points=mm_n_points,
        mm_num_tokens=mm_num_tokens, mm_num_layers=mm_num_layers))
    state = projector.state_dict()
    transferred, dropped = [], []
    for key, value in sorted(source.items()):
        target = SWIN_CONV_TO_DEFORMABLE.get(key)
        if target is None:
            dropped.append((key, tuple(value.shape), 'no counterpart'))
        elif state[target].shape != value.shape:
            dropped.append((key, tuple(value.shape),
                            f'shape differs from {target} '
                            f'{tuple(state[target].shape)}'))
        else:
            state[target] = value.to(state[target].dtype).clone()
            transferred.append((key, target, tuple(value.shape)))
    if not transferred:
        why = [f'{k} {s}: {w}' for k, s, w in dropped
               if k in SWIN_CONV_TO_DEFORMABLE]
        raise ValueError(
            'nothing transferred from the swin_conv file to the deformable '
            f'projector ({"; ".join(why) or "no fc.* key"}); check '
            '--projector-outdim (the LLM width of the swin_conv run)')
    done = {t for _, t, _ in transferred}
    initialised = [(k, tuple(v.shape)) for k, v in state.items()
                   if k not in done]
    return state, AdaptReport(transferred, initialised, dropped)


def format_report(report: AdaptReport) -> str:
    """A plain-text table of the three groups."""
    lines = [f'transferred ({len(report.transferred)}):']
    lines += [f'  {src:<40} -> {dst:<28} {shape}'
              for src, dst, shape in report.transferred]
    lines.append(f'newly initialised ({len(report.initialised)}):')
    lines += [f'  {key:<70} {shape}' for key, shape in report.initialised]
    lines.append(f'dropped ({len(report.dropped)}):')
    lines += [f'  {key:<40} {shape}  ({why})'
              for key, shape, why in report.dropped]
    return '\n'.join(lines)
