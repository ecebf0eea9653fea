"""The process's place among torchrun's ranks; a plain process is rank 0 of 1."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int


def init_ranks(cuda_collectives: bool = False) -> Ranks:
    """Read torchrun's environment and, with several ranks, join the process group.

    Stages that only wait for each other need gloo (CPU) barriers. `cuda_collectives` adds NCCL for CUDA
    tensors on GPUs (CFG-parallel sampling exchanges them every step).
    """
    ranks = Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if ranks.world > 1 and not dist.is_initialized():
        backend = "gloo"
        if cuda_collectives and torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"
        # long stages (sampling, encoding) keep ranks apart for hours between barriers
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=48))
    return ranks


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a plain process)."""
    if dist.is_initialized():
        dist.barrier()
