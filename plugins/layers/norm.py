"""Normalisation helpers shared by the projector and the neck."""
import math

import torch.nn as nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with up to ``max_groups`` groups of at least 8 channels.

    Groups of one channel fail on 1x1 maps (the coarsest extra level of a
    small image) and normalise away all signal; mmdet's 256-channel necks
    use 32 groups of 8, which this reproduces.
    """
    return nn.GroupNorm(max(1, math.gcd(max_groups, channels // 8)), channels)
