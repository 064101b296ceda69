"""ConceptCLIP HF folders in the released layout, written from data.

The layouts are ``conceptclip_*_keys.json`` next to this file: every
state-dict key of upstream's model (``JerrryNie/ConceptCLIP``,
``pre_training/src/open_clip``: ``CustomTextCLIP`` with the concept heads)
with its shape, and the open_clip model fields a folder's ``config.json``
states.  Nothing here uses the package's ConceptCLIP code: tensors are
random values of the listed shapes, so a test can load them with the
user-facing loaders and recompute the outputs with timm and transformers.
"""
import json
import math
import shutil
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

DATA = Path(__file__).resolve().parent
#: The shipped BERT configs (data: sizes of the text towers).
HF_CONFIGS = DATA.parents[1] / 'plugins' / 'models' / 'model_configs' / 'hf'
FULL = 'conceptclip_so400m_384_keys.json'
TINY = 'conceptclip_tiny_test_keys.json'

#: Values of the scalars in the written folders (not their inits, so a
#: loader that keeps its own init is caught).
SCALARS = {
    'logit_scale': math.log(12.5),
    'logit_bias': -3.25,
    'concept_logit_scale': math.log(7.0),
    'concept_logit_bias': -1.5,
}


def load_layout(name: str = TINY) -> dict:
    """``{'keys': {key: [shape]}, 'config': {...}, ...}`` of a layout."""
    return json.loads((DATA / name).read_text())


def random_state(layout: dict, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors of the layout's shapes: weights ~ N(0, 0.05),
    norm weights ~ 1 + N(0, 0.1), the scalars of :data:`SCALARS`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(layout['keys'].items()):
        if key in SCALARS:
            state[key] = torch.tensor(SCALARS[key])
            continue
        value = torch.randn(*shape, generator=gen)
        if 'norm' in key.lower() and key.endswith('weight'):
            value = 1 + 0.1 * value
        else:
            value = 0.05 * value
        state[key] = value.reshape(shape).contiguous()
    return state


def write_folder(root: Path,
                 layout: dict,
                 state: Dict[str, torch.Tensor],
                 sharded: bool = False,
                 prefix: str = '',
                 config: bool = True,
                 vocab: Path = None) -> Path:
    """Write ``state`` as an HF model folder.

    Args:
        root: the folder (created).
        sharded: two shards and ``model.safetensors.index.json`` instead of
            one ``model.safetensors``.
        prefix: put in front of every key (an export that wraps the model).
        config: write ``config.json`` (HF bookkeeping plus the layout's
            open_clip fields).
        vocab: a ``vocab.txt`` to copy in.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.contiguous() for k, v in state.items()}
    if sharded:
        keys = sorted(state)
        shards = {
            'model-00001-of-00002.safetensors': keys[:len(keys) // 2],
            'model-00002-of-00002.safetensors': keys[len(keys) // 2:],
        }
        for name, part in shards.items():
            save_file({k: state[k] for k in part}, str(root / name))
        (root / 'model.safetensors.index.json').write_text(
            json.dumps({
                'metadata': {},
                'weight_map': {k: n for n, part in shards.items()
                               for k in part}
            }))
    else:
        save_file(state, str(root / 'model.safetensors'))
    if config:
        (root / 'config.json').write_text(
            json.dumps(dict(layout['hf_config'], **layout['config'])))
    if vocab is not None:
        shutil.copy(vocab, root / 'vocab.txt')
    return root


def reference_outputs(layout, state, pixels, ids=None):
    """ConceptCLIP's outputs recomputed from the state dict with timm's
    ViT and transformers' BertModel, following upstream's forward:
    SigLIP attention-pool embedding; masked mean of BERT's last hidden
    state through ``text.proj``; bias-free GELU MLPs on the tokens."""
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BertConfig, BertModel
    vit = VisionTransformer(**layout['reference']['timm_vit']).eval()
    vit.load_state_dict({
        k[len('visual.trunk.'):]: v
        for k, v in state.items() if k.startswith('visual.trunk.')
    })
    bert_cfg = BertConfig.from_json_file(
        str(HF_CONFIGS / layout['reference']['bert_config'] / 'config.json'))
    bert = BertModel(bert_cfg, add_pooling_layer=False).eval()
    bert.load_state_dict({
        k[len('text.transformer.'):]: v
        for k, v in state.items() if k.startswith('text.transformer.')
    })

    def mlp(x, name):
        return F.linear(F.gelu(F.linear(x, state[f'{name}.0.weight'])),
                        state[f'{name}.2.weight'])

    with torch.no_grad():
        img_tokens = vit.forward_features(pixels)
        img = F.normalize(vit.forward_head(img_tokens), dim=-1)
        if ids is None:
            return dict(image_features=img,
                        image_tokens=img_tokens,
                        image_token_features=mlp(img_tokens, 'image_proj'))
        mask = (ids != bert_cfg.pad_token_id).long()
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, True)
        txt = F.normalize(F.linear(pooled, state['text.proj.weight']), dim=-1)
        logits = state['logit_scale'].exp() * img @ txt.T + \
            state['logit_bias']
        return dict(
            image_features=img,
            text_features=txt,
            image_tokens=img_tokens,
            image_token_features=mlp(img_tokens, 'image_proj'),
            text_token_features=mlp(hidden, 'text_proj'),
            logits=logits)


def shapes(state) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}
