"""Diffusion timestep sampling: uniform, or stratified over the global batch (the paper's sub-interval sampling).

With S strata (by default the number of ranks W) and a global batch of G samples, the sample at global
position g lies in stratum s = g * S // G and draws its timestep uniformly from [floor(sT/S), floor((s+1)T/S)).
With S = W every rank r draws from its own sub-interval [rT/W, (r+1)T/W), so each global batch spans all
noise levels. Each timestep is a function of (seed, micro-batch, g) only, so a single process holding the
whole global batch with `strata: W` draws exactly the timesteps W ranks draw together.
"""

from __future__ import annotations

import hashlib

import torch

from ophora.core.errors import ConfigError

KINDS = ("uniform", "stratified")


def sample_seed(seed: int, micro_step: int, position: int, purpose: str) -> int:
    """A 63-bit seed for one sample's random draw; independent of rank count and resume point."""
    digest = hashlib.sha256(f"{seed}\x1f{micro_step}\x1f{position}\x1f{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stratum_bounds(stratum: int, strata: int, num_timesteps: int) -> tuple[int, int]:
    """[low, high) of one stratum of [0, num_timesteps)."""
    return stratum * num_timesteps // strata, (stratum + 1) * num_timesteps // strata


def sample_timesteps(kind: str, positions: list[int], global_batch: int, strata: int, num_timesteps: int,
                     seed: int, micro_step: int) -> torch.Tensor:
    """Integer timesteps for the samples at `positions` of a global batch of size `global_batch`."""
    if kind not in KINDS:
        raise ConfigError(f"timestep_sampling must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "stratified" and not 1 <= strata <= min(global_batch, num_timesteps):
        raise ConfigError(f"strata must be between 1 and the global batch size {global_batch}, got {strata}")
    out = []
    for g in positions:
        gen = torch.Generator().manual_seed(sample_seed(seed, micro_step, g, "timestep"))
        low, high = (0, num_timesteps) if kind == "uniform" else stratum_bounds(g * strata // global_batch, strata, num_timesteps)
        out.append(int(torch.randint(low, high, (1,), generator=gen)))
    return torch.tensor(out, dtype=torch.long)
