"""Global batches cut into shards over the ranks: the same training step in one process or many.

A global batch is `shards` x `batch_size` clips of the epoch's order; shard s holds its s-th `batch_size`
(the last batch's shards may be short or empty). Rank r of W runs shards r, r + W, ... in turn,
accumulating their gradients. A shard's random draws (dropout, stochastic depth) are seeded from (seed,
epoch, batch, shard) alone and its loss is its clips' summed loss over the clips of the whole batch, so the
sum of the ranks' gradients is the gradient one process gets running every shard in turn. BatchNorm running
statistics become the mean of each shard's update from the step's starting values (with one shard, the
usual update), summed over the ranks the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ophora.core.ranks import Ranks


def step_shards(order: list[int], step: int, shards: int, size: int) -> list[list[int]]:
    """The shards (clip indices) of global batch `step` of an epoch's `order`."""
    start = step * shards * size
    return [order[start + s * size:start + (s + 1) * size] for s in range(shards)]


def own_shards(shards: int, ranks: Ranks) -> range:
    """The shards of every global batch this rank runs."""
    return range(ranks.rank, shards, ranks.world)


def sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place (one reduction per dtype; nothing in one process)."""
    if not dist.is_initialized():
        return
    for dtype in sorted({t.dtype for t in tensors}, key=str):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def agreed_stop(signum: int) -> int:
    """The signal any rank was asked to stop by (the largest number; 0: none), the same on every rank."""
    if not dist.is_initialized():
        return signum
    flag = torch.tensor([signum])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item()


def gather_rows(local: torch.Tensor, count: int, ranks: Ranks) -> torch.Tensor:
    """All `count` rows, where this rank holds rows rank, rank + world, ... (`local`, on the CPU)."""
    if ranks.world == 1:
        return local
    per_rank = -(-count // ranks.world)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).reshape(per_rank * ranks.world, *local.shape[1:])[:count]


class NormStatistics:
    """The BatchNorm running statistics of a step over its shards (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for b in m.buffers()]
        self.initial: list[torch.Tensor] = []
        self.total: list[torch.Tensor] = []

    def start_step(self) -> None:
        self.initial = [b.clone() for b in self.buffers]
        self.total = [torch.zeros_like(b) for b in self.buffers]

    def start_shard(self) -> None:
        for buffer, initial in zip(self.buffers, self.initial):
            buffer.copy_(initial)

    def end_shard(self) -> None:
        for total, buffer in zip(self.total, self.buffers):
            total += buffer

    def end_step(self, shards_run: int) -> None:
        """Keep the mean over the `shards_run` shards of this step that every rank ran together."""
        sum_over_ranks(self.total)
        for buffer, total in zip(self.buffers, self.total):
            buffer.copy_(total / shards_run if total.is_floating_point() else total // shards_run)
