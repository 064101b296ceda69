"""The semantic multiplier: prompt probabilities -> a score factor."""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MultiplierRule:
    """Thresholds and values of :func:`semantic_multiplier`.

    The rule, first match wins (comparisons are strict):

    1. ``p_neg_sum > neg_thr`` -> ``neg_value`` (background: suppress);
    2. ``p_pos_sum > strong_pos_thr and p_neg_sum < strong_neg_thr`` ->
       ``strong_value`` (a clear object: boost);
    3. ``p_pos_sum > pos_thr`` -> ``pos_value`` (keep as is);
    4. otherwise ``default_value``.

    Args:
        neg_thr (float): Default: 0.5.
        strong_pos_thr (float): Default: 0.7.
        strong_neg_thr (float): Default: 0.2.
        pos_thr (float): Default: 0.4.
        neg_value (float): Default: 0.1.
        strong_value (float): Default: 2.0.
        pos_value (float): Default: 1.0.
        default_value (float): Default: 0.5.
    """
    neg_thr: float = 0.5
    strong_pos_thr: float = 0.7
    strong_neg_thr: float = 0.2
    pos_thr: float = 0.4
    neg_value: float = 0.1
    strong_value: float = 2.0
    pos_value: float = 1.0
    default_value: float = 0.5

    def __call__(self, p_pos_sum: float, p_neg_sum: float) -> float:
        if p_neg_sum > self.neg_thr:
            return self.neg_value
        if p_pos_sum > self.strong_pos_thr and p_neg_sum < self.strong_neg_thr:
            return self.strong_value
        if p_pos_sum > self.pos_thr:
            return self.pos_value
        return self.default_value

    def to_dict(self) -> dict:
        return asdict(self)


def semantic_multiplier(p_pos_sum: float, p_neg_sum: float,
                        **overrides) -> float:
    """Score factor of a region from its summed prompt probabilities.

    Defaults: ``0.1`` if ``p_neg_sum > 0.5``; else ``2.0`` if
    ``p_pos_sum > 0.7 and p_neg_sum < 0.2``; else ``1.0`` if
    ``p_pos_sum > 0.4``; else ``0.5``.

    Args:
        p_pos_sum (float): summed probability of the positive prompts.
        p_neg_sum (float): summed probability of the negative prompts.
        **overrides: any field of :class:`MultiplierRule`
            (e.g. ``neg_thr=0.6, strong_value=1.5``).

    Example:
        >>> semantic_multiplier(0.8, 0.1)
        2.0
        >>> semantic_multiplier(0.8, 0.1, strong_value=1.5)
        1.5
    """
    try:
        rule = MultiplierRule(**overrides)
    except TypeError as err:
        raise TypeError(f'semantic_multiplier: {err}; known: '
                        f'{sorted(MultiplierRule().to_dict())}') from None
    return rule(float(p_pos_sum), float(p_neg_sum))
