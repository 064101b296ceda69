"""Layer-wise learning-rate decay for ViT backbones (the fine-tuning recipe
of BEiT, ViTDet, EVA and ViT-Adapter), as an mmengine optimizer-wrapper
constructor."""
import re
from typing import Dict, List, Optional, Sequence

import torch.nn as nn
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor

#: A transformer block in a parameter name: ``blocks.<i>.`` (timm, e.g.
#: BiomedCLIP's / ConceptCLIP's trunk) or ``resblocks.<i>.`` (OpenAI CLIP,
#: open_clip, CLIP Surgery).  Used when the backbone has no ``blocks``.
BLOCK_PATTERN = re.compile(r'(?:^|\.)(?:res)?blocks\.(\d+)\.')
#: Backbone parameters before the first block (layer 0): patch embedding,
#: class / register tokens, position embedding, pre-norm.
EMBEDDING_PATTERN = re.compile(
    r'(?:^|\.)(?:patch_embed|conv1|class_embedding|cls_token|reg_token|'
    r'positional_embedding|pos_embed|ln_pre|norm_pre)(?:\.|$)')
#: Parameters that never get weight decay, besides every 1-D parameter
#: (norm weights and biases, layer scales) and every ``.bias``.
NO_DECAY_PATTERN = re.compile(
    r'(?:^|\.)(?:class_embedding|cls_token|reg_token|positional_embedding|'
    r'pos_embed)$')


def layer_id_of(name: str, num_layers: int, block_index: Optional[int] = None,
                prefix: str = 'backbone.') -> int:
    """Layer of a parameter: 0 for the backbone's embeddings, ``i + 1`` for
    block ``i``, ``num_layers + 1`` for everything else (the backbone's final
    norm and projection, the neck, the head).

    Args:
        name (str): Parameter name in the detector (``backbone.visual...``).
        num_layers (int): Transformer blocks of the backbone.
        block_index (int, optional): The block holding the parameter when
            known from the module itself; else read from the name.
        prefix (str): Name prefix of the backbone. Default: ``'backbone.'``.
    """
    if not name.startswith(prefix):
        return num_layers + 1
    if block_index is not None:
        return block_index + 1
    rest = name[len(prefix):]
    match = BLOCK_PATTERN.search(rest)
    if match:
        return int(match.group(1)) + 1
    if EMBEDDING_PATTERN.search(rest):
        return 0
    return num_layers + 1


def no_weight_decay(name: str, ndim: int) -> bool:
    """Norms, biases, layer scales (1-D), position embeddings and class
    tokens get no weight decay."""
    return ndim <= 1 or name.endswith('.bias') or bool(
        NO_DECAY_PATTERN.search(name))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise LR decay for CLIP ViT backbones.

    A parameter of layer ``l`` learns at ``lr * decay ** (num_layers + 1 -
    l)``: embeddings are layer 0, block ``i`` is layer ``i + 1``, and the
    backbone's final norm / projection, the neck and the head are layer
    ``num_layers + 1`` (full rate).  Norm weights, biases, position
    embeddings and class tokens get no weight decay.  Frozen parameters
    (``requires_grad=False``: ``frozen=True``, blocks outside
    ``train_last_n_blocks``, unused heads) are left out of the optimizer.
    ``custom_keys`` and the other ``paramwise_cfg`` options of mmengine's
    default constructor still apply; the layer scale multiplies their LR.

    Config::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.1),
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.7))

    ``paramwise_cfg`` keys of this class:

    * ``layer_decay_rate`` (float, required): the decay, in ``(0, 1]``
      (ViTDet: 0.7 for ViT-B);
    * ``num_layers`` (int, optional): blocks of the backbone; by default
      ``len(model.backbone.blocks)``, else read from the parameter names;
    * ``backbone_prefix`` (str): default ``'backbone.'``.

    Each group gets ``layer_id`` and ``lr_scale`` entries (for logs and
    tests) besides ``lr`` and ``weight_decay``.
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'layer_decay_rate' not in paramwise_cfg:
            raise ValueError('LayerDecayOptimWrapperConstructor needs '
                             'paramwise_cfg.layer_decay_rate (e.g. 0.7), got '
                             f'paramwise_cfg={paramwise_cfg}')
        self.layer_decay_rate = float(paramwise_cfg.pop('layer_decay_rate'))
        if not 0.0 < self.layer_decay_rate <= 1.0:
            raise ValueError('layer_decay_rate must be in (0, 1], got '
                             f'{self.layer_decay_rate}')
        self.num_layers = paramwise_cfg.pop('num_layers', None)
        self.backbone_prefix = paramwise_cfg.pop('backbone_prefix',
                                                 'backbone.')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        # Non-empty, so that the default __call__ goes through add_params.
        self.paramwise_cfg = dict(paramwise_cfg,
                                  layer_decay_rate=self.layer_decay_rate)

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', **kwargs) -> None:
        """mmengine's per-parameter groups (``custom_keys`` etc.), then the
        layer scale and no-decay rule on top, frozen parameters dropped."""
        if prefix:  # the default constructor's recursion into children
            super().add_params(params, module, prefix, **kwargs)
            return
        groups: List[dict] = []
        super().add_params(groups, module, prefix, **kwargs)
        model = getattr(module, 'module', module)  # (MM)DDP wrappers
        names = {id(p): n for n, p in model.named_parameters()}
        blocks = _block_indices(model, self.backbone_prefix)
        num_layers = self._num_layers(model, names.values())
        merged: Dict[tuple, dict] = {}
        for group in groups:
            (param, ) = group['params']
            if not param.requires_grad:
                continue
            name = names[id(param)]
            layer = layer_id_of(name, num_layers, blocks.get(id(param)),
                                self.backbone_prefix)
            scale = self.layer_decay_rate**(num_layers + 1 - layer)
            settings = {k: v for k, v in group.items() if k != 'params'}
            settings['lr'] = settings.get('lr', self.base_lr) * scale
            if no_weight_decay(name, param.ndim):
                settings['weight_decay'] = 0.0
            elif self.base_wd is not None:
                settings.setdefault('weight_decay', self.base_wd)
            settings.update(layer_id=layer, lr_scale=scale)
            key = tuple(sorted(settings.items()))
            merged.setdefault(key, dict(params=[], **settings))
            merged[key]['params'].append(param)
        params.extend(merged.values())
        MMLogger.get_current_instance().info(
            f'layer-wise LR decay {self.layer_decay_rate} over {num_layers} '
            f'blocks: {len(params)} parameter groups, '
            f'{sum(len(g["params"]) for g in params)} trainable tensors')

    def _num_layers(self, model: nn.Module, names: Sequence[str]) -> int:
        if self.num_layers is not None:
            return int(self.num_layers)
        blocks = getattr(getattr(model, 'backbone', None), 'blocks', None)
        if blocks is not None:
            return len(blocks)
        ids = [int(m.group(1)) for n in names
               if n.startswith(self.backbone_prefix)
               for m in [BLOCK_PATTERN.search(n[len(self.backbone_prefix):])]
               if m]
        if not ids:
            raise ValueError(
                'LayerDecayOptimWrapperConstructor found no transformer '
                f'blocks under {self.backbone_prefix!r} (no .blocks attribute '
                'and no "blocks.<i>." / "resblocks.<i>." in the parameter '
                'names); set paramwise_cfg.num_layers')
        return max(ids) + 1


def _block_indices(model: nn.Module, prefix: str) -> Dict[int, int]:
    """``id(param) -> block index`` from the backbone's own ``blocks``."""
    backbone = getattr(model, prefix.rstrip('.'), None)
    blocks = getattr(backbone, 'blocks', None)
    if blocks is None:
        return {}
    return {id(p): i for i, block in enumerate(blocks)
            for p in block.parameters()}
