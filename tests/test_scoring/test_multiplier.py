import pytest

from plugins.scoring import MultiplierRule, semantic_multiplier

EPS = 1e-9

# (p_pos_sum, p_neg_sum, expected) at and around every threshold
CASES = [
    # rule 1: p_neg_sum > 0.5 -> 0.1 (wins over everything)
    (0.9, 0.5 + EPS, 0.1),
    (0.0, 1.0, 0.1),
    (0.45, 0.5 + EPS, 0.1),
    (0.2, 0.5, 0.5),  # 0.5 is not > 0.5
    (0.45, 0.5, 1.0),
    (0.2, 0.5 - EPS, 0.5),
    # rule 2: p_pos_sum > 0.7 and p_neg_sum < 0.2 -> 2.0
    (0.7 + EPS, 0.2 - EPS, 2.0),
    (0.7 + EPS, 0.0, 2.0),
    (0.7, 0.1, 1.0),  # 0.7 is not > 0.7
    (0.7 - EPS, 0.1, 1.0),
    (0.8, 0.2, 1.0),  # 0.2 is not < 0.2
    (0.8, 0.2 + EPS, 1.0),
    (1.0, 0.2 - EPS, 2.0),
    # rule 3: p_pos_sum > 0.4 -> 1.0
    (0.4 + EPS, 0.3, 1.0),
    (0.4, 0.3, 0.5),  # 0.4 is not > 0.4
    (0.4 - EPS, 0.3, 0.5),
    (0.4 + EPS, 0.0, 1.0),
    # rule 4: default 0.5
    (0.0, 0.0, 0.5),
    (0.1, 0.1, 0.5),
]


@pytest.mark.parametrize('p_pos, p_neg, expected', CASES)
def test_default_rule_around_thresholds(p_pos, p_neg, expected):
    assert semantic_multiplier(p_pos, p_neg) == expected
    assert MultiplierRule()(p_pos, p_neg) == expected


def test_overrides_move_thresholds_and_values():
    assert semantic_multiplier(0.55, 0.0, pos_thr=0.6) == 0.5
    assert semantic_multiplier(0.65, 0.0, pos_thr=0.6) == 1.0
    assert semantic_multiplier(0.9, 0.55, neg_thr=0.6,
                               strong_neg_thr=0.6) == 2.0
    assert semantic_multiplier(0.9, 0.7, neg_value=0.0) == 0.0
    assert semantic_multiplier(0.9, 0.1, strong_value=1.5) == 1.5
    assert semantic_multiplier(0.5, 0.3, pos_value=1.2) == 1.2
    assert semantic_multiplier(0.1, 0.1, default_value=0.25) == 0.25


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match='neg_threshold'):
        semantic_multiplier(0.5, 0.5, neg_threshold=0.3)
