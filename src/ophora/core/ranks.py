"""The process's place among torchrun's ranks (a plain process is rank 0 of 1) and the device each rank uses."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ophora.core.errors import ConfigError


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


def pick_device(requested: str | None, ranks: Ranks) -> str:
    """The device a rank runs on: `requested` if given (checked), else its own GPU (local rank modulo GPUs) or the CPU."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: this machine has no CUDA GPU (torch {torch.__version__}); "
                              "use --device cpu or leave --device out")
        try:
            torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r} is not a device torch knows (e.g. cpu, cuda, cuda:1)") from None
        return requested
    return f"cuda:{ranks.local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
