"""Stand-in for PSALM's train.py: ModelArguments parsed by HfArgumentParser."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import transformers


@dataclass
class ModelArguments:
    mm_projector_type: Optional[str] = field(default='swin_conv')
    swin_type: Optional[str] = field(default='base')
    projector_outdim: Optional[int] = field(default=2048)
    pretrain_mm_mlp_adapter: Optional[str] = field(default=None)


def train():
    parser = transformers.HfArgumentParser((ModelArguments,))
    model_args, rest = parser.parse_args_into_dataclasses(
        return_remaining_strings=True)
    print('MODEL_ARGS ' + json.dumps(dataclasses.asdict(model_args)))
    print('REST ' + json.dumps(rest))
