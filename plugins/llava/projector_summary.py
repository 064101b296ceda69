"""One log line describing a built ``mm_projector`` (type, settings, size)."""
import torch.nn as nn

#: Attributes of ``MultiScaleDeformableCrossAttentionAlignment`` worth a log
#: line, with the config key that set each.
DEFORMABLE_FIELDS = (('n_levels', None), ('n_heads', 'mm_n_heads'),
                     ('n_points', 'mm_n_points'),
                     ('hidden_dim', 'mm_hidden_dim'),
                     ('num_queries', 'mm_num_tokens'),
                     ('out_dim', 'projector_outdim'))


def describe_projector(projector: nn.Module, config) -> str:
    """``mm_projector summary: type=..., n_levels=4, n_heads=8, ...``.

    Values are read from the built module, falling back to the config, so
    the line shows what was actually built. (The builder itself logs
    ``mm_projector type: ...`` and ``n_levels=..., n_heads=..., n_points=...``
    for the deformable type; this line covers every type and adds the size.)
    """
    total = sum(p.numel() for p in projector.parameters())
    trainable = sum(p.numel() for p in projector.parameters()
                    if p.requires_grad)
    settings = dict(type=type(projector).__name__,
                    mm_projector_type=config.mm_projector_type)
    if config.mm_projector_type == 'deformable':
        for name, key in DEFORMABLE_FIELDS:
            value = getattr(projector, name, None)
            if value is None and key is not None:
                value = getattr(config, key, None)
            settings[name] = value
    else:
        settings['out_dim'] = config.projector_outdim or config.hidden_size
    text = ', '.join(f'{k}={v}' for k, v in settings.items())
    return (f'mm_projector summary: {text}; parameters: {total:,} '
            f'({trainable:,} trainable)')
