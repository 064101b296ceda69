"""Random CLIP weights whose frozen features still carry signal.

open_clip, timm and transformers initialise for training from scratch:
linear weights with std 0.02.  Frozen at that init, attention is uniform and
every block adds only a few percent to its input, so a random text tower
returns almost the same feature for every class name (cosine similarity
> 0.999 for the tiny BiomedCLIP) and prompts have nothing to steer.  Demos
and tests without pretrained weights re-draw the weights with
:func:`fan_in_init_`: each linear/conv weight ~ N(0, 1 / fan_in), the scale
that keeps activations' variance from layer to layer, so random prompts and
class names visibly change the features.  Never used on pretrained weights.
"""
import math

from torch import nn


def fan_in_init_(module: nn.Module) -> nn.Module:
    """Re-draw every ``nn.Linear`` / ``nn.Conv2d`` weight as N(0, 1/fan_in).

    Biases, norms, embeddings and CLIP's projection matrices keep their
    initialisation.  Uses torch's global RNG (seed it for reproducibility).

    Returns:
        nn.Module: ``module``, modified in place.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(fan_in))
    return module
