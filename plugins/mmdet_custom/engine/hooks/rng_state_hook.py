"""Save torch's RNG state in checkpoints so ``--resume`` continues exactly."""
import torch
from mmengine.hooks import Hook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    mmengine re-seeds at start-up and replays the data pipeline when it
    resumes (it advances the dataloader past the iterations already done), so
    numpy/python draws of the transforms line up by themselves.  The model's
    own draws (e.g. DINO's denoising noise) come from torch's global RNG,
    which mmengine does not checkpoint; this hook stores it with each
    checkpoint and puts it back just before the first resumed iteration,
    after the replayed batches and the first new batch have been fetched.
    """

    priority = 'VERY_LOW'
    _KEY = 'torch_rng_state'

    def __init__(self) -> None:
        self._pending_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[self._KEY] = torch.get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending_state = checkpoint.get(self._KEY)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self._pending_state is not None:
            torch.set_rng_state(self._pending_state)
            self._pending_state = None
