"""DeepSpeed checkpoints of the LLaVA-Phi trainer: saving (with the weight
exports users load) and resuming without unsafe unpickling.

DeepSpeed 0.19's ``TorchCheckpointEngine.load`` calls
``torch.load(weights_only=False)``, which runs any code a pickle names. Our
training checkpoints hold tensors, plain containers and two DeepSpeed value
classes (the ZeRO optimizer's ``LossScaler``, its ``ZeroStageEnum`` and
the ``fragment_address`` records of its flat partitions), so :func:`use_safe_loading` routes every
load through :func:`plugins.utils.safe_load_object` (``weights_only=True``)
with exactly those classes allow-listed. A checkpoint naming any other
global is refused.
"""
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def deepspeed_checkpoint_classes() -> List[type]:
    """DeepSpeed classes pickled into ZeRO checkpoints (values only: a
    loss-scale record, the stage enum and a ``(start, numel)`` record)."""
    from deepspeed.runtime.fp16.loss_scaler import (DynamicLossScaler,
                                                    LossScaler)
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


def use_safe_loading(engine) -> None:
    """Make ``engine.load_checkpoint`` read files with ``weights_only=True``.

    Replaces ``load`` on the engine's checkpoint engine instance (DeepSpeed
    loads model and optimizer states through it).
    """
    from plugins.utils import safe_load_object

    classes = deepspeed_checkpoint_classes()

    def load(path: str, map_location=None):
        return safe_load_object(path, map_location or 'cpu',
                                extra_globals=classes)

    engine.checkpoint_engine.load = load


def resume_location(arg: str, output_dir: Path) -> Tuple[Path, Optional[str]]:
    """``auto``/``latest``/``true`` -> newest tag in ``output_dir``; a
    ``checkpoint-N`` folder -> (its parent, its name)."""
    if arg.lower() in ('auto', 'latest', 'true'):
        return output_dir, None
    path = Path(arg)
    if (path / 'latest').is_file():
        return path, None
    return path.parent, path.name


def export_weights(engine, out_dir: Path, zero_stage: int) -> None:
    """Write ``model.safetensors`` (every weight, for inference) and PSALM's
    ``mm_projector.bin`` (keys ``model.mm_projector.*``, the file
    ``--pretrain_mm_mlp_adapter`` and the adapter tool read)."""
    from plugins.utils import save_safetensors
    module = engine.module
    params = list(module.parameters())
    if zero_stage == 3:
        import deepspeed
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        import contextlib
        ctx = contextlib.nullcontext()
    with ctx:
        if dist.get_rank() != 0:
            return
        state = {k: v.detach().float().cpu().contiguous().clone()
                 for k, v in module.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, out_dir / 'model.safetensors')
    projector = {f'model.{k}': v for k, v in state.items()
                 if k.startswith('mm_projector.')}
    torch.save(projector, out_dir / 'mm_projector.bin')


def save_checkpoint(engine, output_dir: Path, step: int,
                    zero_stage: int) -> Path:
    tag = f'checkpoint-{step}'
    engine.save_checkpoint(str(output_dir), tag=tag,
                           client_state=dict(global_step=step))
    export_weights(engine, output_dir / tag, zero_stage)
    logger.info('saved %s', output_dir / tag)
    return output_dir / tag
