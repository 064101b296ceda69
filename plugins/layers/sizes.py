"""Size arguments of the deformable attention layers, checked once.

One validation for every way the projector is built: the host-free layers
(:class:`MSDeformCrossAttention`,
:class:`MultiScaleDeformableCrossAttentionAlignment`), the mmdet neck
(``DeformableCrossAttentionNeck``) and the PSALM builder
(``build_vision_projector``).  Each caller passes ``names``, mapping the
layer's argument to the name its user wrote (``n_points`` -> ``num_points``
for the neck, ``mm_n_points`` for PSALM), so the error names the argument
and the value as the user gave them, at construction, instead of a
``ZeroDivisionError`` inside ``torch.nn.init`` or a tensor with a negative
dimension at the first forward.
"""
import math
import numbers
from typing import Mapping, Optional, Sequence

#: Query modes of the projector (see ``MultiScaleDeformableCrossAttentionAlignment``).
QUERY_MODES = ('pooled', 'level', 'all', 'learnable')
#: Levels the projector attends to (the kernels take any number; more than
#: five has never been trained with these defaults).
MAX_LEVELS = 5


def check_size(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, refusing non-integers and values below
    ``minimum``.

    Args:
        owner (str): What is being built (starts the message).
        name (str): The argument as the user wrote it.
        value: The value given (an int; a bool or a float is refused).
        minimum (int): The smallest value allowed. Default: 1.

    Raises:
        ValueError: naming ``owner``, ``name`` and ``value``.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise ValueError(f'{owner}: {name} must be an integer >= {minimum}, '
                         f'got {value!r}')
    return int(value)


def check_attention_args(owner: str, embed_dims, num_heads, num_levels,
                         num_points,
                         names: Optional[Mapping[str, str]] = None) -> None:
    """The sizes of one multi-scale deformable attention layer: each at
    least 1 and ``num_heads`` dividing ``embed_dims``.

    Args:
        owner (str): What is being built.
        embed_dims, num_heads, num_levels, num_points: ``C``, ``M``, ``L``,
            ``P`` of the layer.
        names (Mapping[str, str], optional): The user's name of each
            argument (keys as above), where it differs.
    """
    def n(key):
        return (names or {}).get(key, key)

    embed_dims = check_size(owner, n('embed_dims'), embed_dims)
    num_heads = check_size(owner, n('num_heads'), num_heads)
    check_size(owner, n('num_levels'), num_levels)
    check_size(owner, n('num_points'), num_points)
    if embed_dims % num_heads != 0:
        raise ValueError(f'{owner}: {n("num_heads")} ({num_heads}) must '
                         f'divide {n("embed_dims")} ({embed_dims})')


def check_projector_args(owner: str, in_channels: Sequence[int],
                         hidden_dim, n_heads, n_points, num_layers,
                         ffn_dim=None, out_dim=None, out_hidden_dim=None,
                         query_mode: str = 'pooled', query_level: int = -1,
                         num_queries=256,
                         names: Optional[Mapping[str, str]] = None) -> None:
    """Every argument of ``MultiScaleDeformableCrossAttentionAlignment``
    (same names and meaning; ``None`` where the layer allows it means its
    default).

    Args:
        owner (str): What is being built.
        names (Mapping[str, str], optional): The user's name of each
            argument (the layer's names as keys), where it differs.

    Raises:
        ValueError: the first argument out of range, with its name and
            value.
    """
    def n(key):
        return (names or {}).get(key, key)

    try:
        channels = list(in_channels)
    except TypeError:
        raise ValueError(f'{owner}: {n("in_channels")} must list the '
                         f'channels of each level, got {in_channels!r}'
                         ) from None
    if not 1 <= len(channels) <= MAX_LEVELS:
        raise ValueError(f'{owner}: {n("in_channels")} must list 1 to '
                         f'{MAX_LEVELS} levels, got {len(channels)}')
    for i, c in enumerate(channels):
        check_size(owner, f'{n("in_channels")}[{i}]', c)
    check_attention_args(owner, hidden_dim, n_heads, len(channels), n_points,
                         names=dict(embed_dims=n('hidden_dim'),
                                    num_heads=n('n_heads'),
                                    num_levels=n('in_channels') + ' (levels)',
                                    num_points=n('n_points')))
    if hidden_dim % 4 != 0:
        raise ValueError(f'{owner}: {n("hidden_dim")} ({hidden_dim}) must be '
                         'divisible by 4 for the 2-D sine encoding')
    check_size(owner, n('num_layers'), num_layers, minimum=0)
    for key, size in (('ffn_dim', ffn_dim), ('out_dim', out_dim),
                      ('out_hidden_dim', out_hidden_dim)):
        if size is not None:
            check_size(owner, n(key), size)
    if query_mode not in QUERY_MODES:
        raise ValueError(f'{owner}: unknown {n("query_mode")} '
                         f'{query_mode!r}; expected one of {QUERY_MODES}')
    if not isinstance(query_level, numbers.Integral) or not (
            -len(channels) <= query_level < len(channels)):
        raise ValueError(f'{owner}: {n("query_level")} ({query_level}) out '
                         f'of range for {len(channels)} levels')
    if query_mode in ('pooled', 'learnable'):
        num_queries = check_size(owner, n('num_queries'), num_queries)
        if math.isqrt(num_queries) ** 2 != num_queries:
            raise ValueError(f'{owner}: {n("num_queries")} ({num_queries}) '
                             f'must be a square number (a side x side grid) '
                             f'for {query_mode!r}')
