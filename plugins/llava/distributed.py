"""Process group and data sharding of the LLaVA-Phi trainer.

Runs under the ``deepspeed`` launcher, ``torchrun`` or plain ``python`` (a
single process then sets up its own one-rank process group); on a machine
without CUDA, DeepSpeed's CPU accelerator and the ``gloo`` backend are used.
"""
import os
import socket
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def init_distributed() -> Tuple[int, int]:
    """Initialise DeepSpeed's process group; return ``(rank, world_size)``.

    A plain ``python`` run gets the environment of a one-process group.
    Without CUDA the backend is ``gloo`` (DeepSpeed's CPU accelerator asks
    for oneCCL, which is only there with Intel's extension).
    """
    if 'RANK' not in os.environ:
        os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                          MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = get_accelerator().communication_backend_name()
    if not torch.cuda.is_available():
        if backend == 'ccl':
            try:
                import oneccl_bindings_for_pytorch  # noqa: F401
            except ImportError:
                backend = 'gloo'
        # DeepSpeed JIT-compiles a shared-memory all-reduce op for its CPU
        # accelerator (about 2 minutes on 2 cores, again for every new
        # interpreter path). Its TorchBackend uses that op only for
        # `inference_all_reduce`; training reduces gradients through the
        # process group (gloo) in any case, so the build buys nothing here.
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] = False
    deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def mean_over_ranks(values: Dict[str, float], world: int) -> Dict[str, float]:
    """Average scalar logs over the ranks (all ranks call it)."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t)}



class EpochSampler(Sampler):
    """This rank's shard of a seeded per-epoch permutation, from an offset.

    Resuming mid-epoch skips the indices already consumed without loading
    them.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int):
        self.size, self.rank, self.world = size, rank, world_size
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        per_rank = self.size // self.world  # drop the ragged tail
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return self.size // self.world - self.start
