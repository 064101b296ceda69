"""One log line describing a built ``mm_projector`` (type, settings, size)."""
from typing import Iterable

import torch.nn as nn


def _find(module: nn.Module, names: Iterable[str], default=None):
    """The first attribute among ``names`` on ``module`` or its children
    (the deformable layers keep ``n_heads``/``n_points`` on the attention
    modules)."""
    for candidate in (module, *module.modules()):
        for name in names:
            value = getattr(candidate, name, None)
            if isinstance(value, (int, float, str)):
                return value
    return default


def describe_projector(projector: nn.Module, config) -> str:
    """``mm_projector settings: n_levels=4, n_heads=8, n_points=4, ...``.

    Values are read from the built module where it exposes them, and from
    the config otherwise, so the line shows what was actually built.
    """
    total = sum(p.numel() for p in projector.parameters())
    trainable = sum(p.numel() for p in projector.parameters()
                    if p.requires_grad)
    if config.mm_projector_type == 'deformable':
        settings = dict(
            n_levels=_find(projector, ('n_levels', 'num_levels'), 4),
            n_heads=_find(projector, ('n_heads', 'num_heads'),
                          config.mm_n_heads),
            n_points=_find(projector, ('n_points', 'num_points'),
                           config.mm_n_points),
            hidden_dim=_find(projector, ('hidden_dim', 'embed_dims'),
                             config.mm_hidden_dim),
            num_tokens=_find(projector, ('num_queries', 'num_tokens'),
                             config.mm_num_tokens),
            out_dim=_find(projector, ('out_dim',), config.projector_outdim
                          or config.hidden_size))
    else:
        settings = dict(type=config.mm_projector_type,
                        out_dim=config.projector_outdim or config.hidden_size)
    text = ', '.join(f'{k}={v}' for k, v in settings.items())
    return (f'mm_projector settings: {text}; parameters: {total:,} '
            f'({trainable:,} trainable)')
