"""ConceptCLIP's image tower (SigLIP so400m/14) as a backbone."""
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.registry import MODELS

from plugins.models.concept_clip import (CONCEPT_CLIP_MODEL_NAME,
                                         CONCEPT_CLIP_WEIGHT_FILE_NAMES,
                                         ConceptCLIP, check_folder_config,
                                         convert_concept_clip_state_dict,
                                         read_concept_clip_weights)
from plugins.models.vit_tower import TimmViTTower
from plugins.models.weights import find_weights_file

from .base import CLIPBackboneBase

#: Checkpoint entries the backbone keeps: the image tower and the token
#: projection into the text-aligned space.
IMAGE_PREFIXES = ('visual.', 'image_proj.')


@MODELS.register_module()
class ConceptCLIPBackbone(CLIPBackboneBase):
    """ConceptCLIP's image tower as a single-scale backbone.

    The tower is :class:`plugins.models.concept_clip.ConceptCLIP`'s
    ``visual`` (open_clip ``TimmModel`` around timm's
    ``vit_so400m_patch14_siglip_384``: patch 14, 27 x 27 tokens at 384 px,
    width 1152, no class token; its attention-pool head is unused and
    frozen) plus ``image_proj`` (upstream's bias-free MLP ``Linear(1152,
    1152) -> GELU -> Linear(1152, 1152)``, the token projection into
    ConceptCLIP's text-aligned space), used by ``with_proj=True``.  Tokens
    follow timm's path, as in :class:`BiomedCLIPBackbone` (the same tower
    adapter, :class:`plugins.models.vit_tower.TimmViTTower`).

    Output: ``(B, 1152, ceil(H/14), ceil(W/14))``; at 384 x 384 a 27 x 27
    map.  Normalisation: mean = std = ``(0.5, 0.5, 0.5)``.

    Args:
        model_name (str): ConceptCLIP config. Default:
            ``'ConceptCLIP-SO400M-14-384'``; ``'ConceptCLIP-Tiny-test'``
            (width 64, 4 blocks) for tests.
        pretrained (str, optional): the downloaded ConceptCLIP folder
            (``model.safetensors`` or a sharded
            ``model.safetensors.index.json``; its ``config.json`` is checked
            against ``model_name``) or a weights file (also a detector
            checkpoint via ``init_cfg`` with ``prefix``), read by
            :meth:`init_weights` (before training; never when testing a
            trained checkpoint).  Only ``visual.*`` and ``image_proj.*``
            are used.  A missing path fails there, naming it.
        key_rules (Iterable[tuple[str, str]]): extra ``(regex,
            replacement)`` key renames for exports with other module names.
        mean, std (Sequence[float], optional): normalisation overrides.
        **kwargs: see :class:`CLIPBackboneBase`.

    Example:
        >>> import torch
        >>> from plugins.mmdet_custom.models.backbones import ConceptCLIPBackbone
        >>> m = ConceptCLIPBackbone('ConceptCLIP-Tiny-test').eval()
        >>> [tuple(o.shape) for o in m(torch.rand(2, 3, 224, 224))]
        [(2, 64, 16, 16)]
    """

    def __init__(self,
                 model_name: str = CONCEPT_CLIP_MODEL_NAME,
                 pretrained: Optional[str] = None,
                 key_rules: Iterable[Tuple[str, str]] = (),
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 **kwargs):
        # read by convert_pretrained when the weights load; a plain
        # attribute may be set before nn.Module.__init__
        self.key_rules = [tuple(r) for r in key_rules]
        model = ConceptCLIP(model_name, vision_only=True)
        tower = TimmViTTower(model.visual, projection=model.image_proj)
        default_mean, default_std = model.mean, model.std
        del model  # text tower and logit scales are not kept
        super().__init__(
            tower,
            mean=mean or default_mean,
            std=std or default_std,
            pretrained=pretrained,
            **kwargs)
        self.model_name = model_name

    @property
    def trunk(self) -> nn.Module:
        """The timm ``VisionTransformer`` inside the image tower."""
        return self.visual.trunk

    def read_pretrained(
            self, path: str) -> Tuple[Path, Dict[str, torch.Tensor]]:
        """A ConceptCLIP HF folder (single or sharded safetensors, or
        ``pytorch_model.bin``; its ``config.json`` checked against
        ``model_name``) or a weights file, read as data."""
        found = find_weights_file(path, CONCEPT_CLIP_WEIGHT_FILE_NAMES)
        check_folder_config(found, self.model_name)
        return found, read_concept_clip_weights(found)

    def convert_pretrained(
            self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        state = convert_concept_clip_state_dict(state, self.state_dict(),
                                                self.key_rules)
        if any(k.startswith(IMAGE_PREFIXES) for k in state):
            # a full ConceptCLIP file: text tower and scales are not ours;
            # anything else stays for the strict check to report
            state = {
                k: v
                for k, v in state.items()
                if k.startswith(IMAGE_PREFIXES) or not k.startswith(
                    ('text.', 'text_proj.', 'logit_', 'concept_logit_'))
            }
        return state
