"""SurgeryCLIP backbone for Open-GroundingDino (drop-in, no mmdet needed).

See ``docs/integrations/open_groundingdino.md``.
"""
from .patch_build_backbone import BACKBONE_NAME, apply, build_joined_backbone
from .surgeryclip_backbone import (NestedTensor, SurgeryCLIPGroundingBackbone,
                                   build_surgeryclip_backbone,
                                   nested_tensor_class)

__all__ = [
    'BACKBONE_NAME', 'apply', 'build_joined_backbone', 'NestedTensor',
    'SurgeryCLIPGroundingBackbone', 'build_surgeryclip_backbone',
    'nested_tensor_class'
]
