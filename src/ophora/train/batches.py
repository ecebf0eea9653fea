"""Training batches from a latent cache: same-shape global batches in a seeded order, split over ranks.

Clips are grouped by latent shape (their resolution/frame bucket), shuffled within each group with a
seed and the epoch number, cut into global batches of `global_batch` clips (a group's remainder is left
out of that epoch), and the global batches are shuffled. Micro-batch m is global batch m of the endless
sequence of epochs; rank r takes its slice [r * B, (r + 1) * B). The order depends only on the seed and
the global batch size, so resuming at micro-batch m, or running the same global batch on fewer ranks,
reads exactly the same clips.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ophora.core.latent_cache import CacheEntry, load_clip
from ophora.core.errors import InputError


def plan_epoch(entries: list[CacheEntry], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches (lists of entry indices, one shape each) of one epoch."""
    rng = random.Random(f"{seed}-{epoch}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.latent_shape, []).append(i)
    batches = []
    for shape in sorted(groups):
        members = groups[shape]
        rng.shuffle(members)
        batches += [members[k:k + global_batch] for k in range(0, len(members) - global_batch + 1, global_batch)]
    rng.shuffle(batches)
    return batches


def batches_per_epoch(entries: list[CacheEntry], global_batch: int) -> int:
    counts: dict[tuple[int, ...], int] = {}
    for e in entries:
        counts[e.latent_shape] = counts.get(e.latent_shape, 0) + 1
    n = sum(c // global_batch for c in counts.values())
    if n == 0:
        raise InputError(f"no resolution/frame bucket of the cache holds {global_batch} clips (the global batch: "
                         f"batch_size x processes); the buckets hold {sorted(counts.values(), reverse=True)}")
    return n


class MicroBatches(torch.utils.data.Dataset):
    """Item k is this rank's slice of micro-batch `start + k`: stacked cache tensors plus their positions."""

    def __init__(self, cache: Path, entries: list[CacheEntry], batch_size: int, rank: int, world: int, seed: int,
                 start: int, count: int):
        self.cache, self.entries, self.batch_size, self.rank = cache, entries, batch_size, rank
        self.global_batch, self.seed, self.start, self.count = batch_size * world, seed, start, count
        self.per_epoch = batches_per_epoch(entries, self.global_batch)
        self._plans: dict[int, list[list[int]]] = {}

    def __len__(self) -> int:
        return self.count

    def clip_indices(self, micro_step: int) -> list[int]:
        """Entry indices of this rank's part of a micro-batch."""
        epoch, k = divmod(micro_step, self.per_epoch)
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.entries, self.global_batch, self.seed, epoch)}
        lo = self.rank * self.batch_size
        return self._plans[epoch][k][lo:lo + self.batch_size]

    def __getitem__(self, k: int) -> dict:
        micro_step = self.start + k
        clips = [load_clip(self.cache / self.entries[i].file) for i in self.clip_indices(micro_step)]
        batch = {key: torch.stack([c[key] for c in clips]) for key in ("latent_mean", "latent_logvar", "prompt_embeds")}
        lo = self.rank * self.batch_size
        batch["positions"] = torch.arange(lo, lo + len(clips))
        batch["micro_step"] = torch.tensor(micro_step)
        return batch
