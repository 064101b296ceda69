"""Floor 1 helpers (torch and safetensors only): safe checkpoint loading,
state-dict key mapping and position-embedding resampling."""
from .checkpoint import (SAFE_GLOBALS, CheckpointError, UnsafeCheckpointError,
                         non_regular_kind, read_shard_index, safe_load,
                         safe_load_object, safe_load_sharded,
                         save_safetensors)
from .json_file import read_json_object
from .pos_embed import (POS_EMBED_INTERP_PRESETS, pos_embed_interp_args,
                        resample_pos_embed)
from .state_dict import (CONVERTER_HINT, StateDictMismatchError, add_prefix,
                         check_state_dict, describe_mismatch, key_mismatch,
                         rename_keys, select_prefix, strip_prefix,
                         unwrap_state_dict)

__all__ = [
    'SAFE_GLOBALS', 'CheckpointError', 'UnsafeCheckpointError',
    'non_regular_kind', 'read_shard_index', 'safe_load', 'safe_load_object',
    'safe_load_sharded', 'save_safetensors', 'read_json_object', 'resample_pos_embed',
    'POS_EMBED_INTERP_PRESETS', 'pos_embed_interp_args',
    'CONVERTER_HINT', 'StateDictMismatchError', 'add_prefix',
    'check_state_dict', 'describe_mismatch', 'key_mismatch', 'rename_keys',
    'select_prefix', 'strip_prefix', 'unwrap_state_dict'
]
