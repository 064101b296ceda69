"""Stand-in for PSALM's llava_trainer: the import PSALM's trainer makes."""
from transformers.utils import is_torch_tpu_available  # noqa: F401


class LLaVATrainer:
    pass
