"""Stand-in for PSALM's train.py: ModelArguments parsed by HfArgumentParser."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import transformers

# As PSALM: train.py -> train_datasets -> llava_trainer, whose import of
# transformers.utils.is_torch_tpu_available fails where transformers dropped
# it (present in 4.36.2, absent in 4.57.6).
from psalm.train.llava_trainer import LLaVATrainer  # noqa: F401


@dataclass
class ModelArguments:
    with_norm: bool = field(default=True)
    with_layernorm: bool = field(default=False)
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
