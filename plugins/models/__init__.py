"""Host-free model builders (open_clip, timm, transformers; no mmdet).

Importing this package registers the shipped model configs
(``model_configs/*.json``) with open_clip.
"""
from .biomedclip import (BIOMEDCLIP_MODEL_NAME, BIOMEDCLIP_TINY_MODEL_NAME,
                         build_biomedclip)
from .open_clip_factory import (HF_CONFIG_DIR, MODEL_CONFIG_DIR,
                                activation_fix, build_open_clip, build_preprocess,
                                build_tokenizer, create_model,
                                get_model_config, list_shipped_models,
                                normalization_stats, register_model_configs)
from .clip_surgery import build_clip_surgery, feature_surgery, similarity_map
# registers ConceptCLIP's timm trunk names used by the shipped configs
from .concept_clip import (CONCEPT_CLIP_MODEL_NAME,
                           CONCEPT_CLIP_TINY_MODEL_NAME, build_concept_clip)
from .builder import build_clip_model, has_bert_text_tower
from .tokenizer import LocalBertTokenizer
from .weights import (OPENAI_METADATA_KEYS, WEIGHT_FILE_NAMES,
                      ActivationMismatchError, check_activation,
                      convert_to_open_clip, find_weights_file,
                      is_openai_state_dict, load_open_clip_weights,
                      open_clip_activation, weights_layout)

register_model_configs()

#: Tiny OpenCLIP-style ViT (width 64, 4 blocks, patch 16) for tests/demos.
OPEN_CLIP_TINY_MODEL_NAME = 'ViT-Tiny-16-test'

__all__ = [
    'build_clip_surgery', 'feature_surgery', 'similarity_map',
    'CONCEPT_CLIP_MODEL_NAME', 'CONCEPT_CLIP_TINY_MODEL_NAME',
    'build_concept_clip', 'BIOMEDCLIP_MODEL_NAME',
    'BIOMEDCLIP_TINY_MODEL_NAME', 'OPEN_CLIP_TINY_MODEL_NAME',
    'build_biomedclip', 'build_clip_model', 'has_bert_text_tower',
    'HF_CONFIG_DIR', 'MODEL_CONFIG_DIR', 'activation_fix',
    'build_open_clip',
    'build_preprocess', 'build_tokenizer', 'create_model', 'get_model_config',
    'list_shipped_models', 'normalization_stats', 'register_model_configs',
    'LocalBertTokenizer', 'OPENAI_METADATA_KEYS', 'WEIGHT_FILE_NAMES',
    'ActivationMismatchError', 'check_activation', 'convert_to_open_clip',
    'find_weights_file', 'is_openai_state_dict', 'load_open_clip_weights',
    'open_clip_activation', 'weights_layout'
]
