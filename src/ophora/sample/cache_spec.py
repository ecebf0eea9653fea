"""The step-cache modes of `ophora sample --cache` and their parameters (the hooks are in step_cache.py)."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("none", "fixed", "fbc", "taylorseer", "pab", "fastercache")
# Each mode's parameters and their defaults (None: the mode does not use it).
DEFAULTS = {
    "fixed": {"interval": 3, "warmup": 5, "order": 1},
    "fbc": {"threshold": 0.05},
    "taylorseer": {"interval": 5, "warmup": 3, "order": 1},
    "pab": {"interval": 2},
    "fastercache": {"interval": 2},
}
BLOCK_LEVEL = ("none", "fixed", "fbc")  # modes that leave the blocks' insides alone (compatible with compiling them)
NEEDS_WHOLE_CFG_BATCH = ("fbc", "fastercache")  # decide from the whole (unconditional, conditional) batch


@dataclass(frozen=True)
class CacheSpec:
    """One step-cache mode with its parameters (those it does not use are None)."""

    mode: str = "none"
    interval: int | None = None
    warmup: int | None = None
    order: int | None = None
    threshold: float | None = None

    @classmethod
    def make(cls, mode: str, interval: int | None = None, warmup: int | None = None, order: int | None = None,
             threshold: float | None = None) -> CacheSpec:
        """The spec of `mode`, with the mode's defaults for the parameters not given and None for the others."""
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, got {mode!r}")
        given = {"interval": interval, "warmup": warmup, "order": order, "threshold": threshold}
        used = DEFAULTS.get(mode, {})
        return cls(mode, **{k: (given[k] if given[k] is not None else used[k]) if k in used else None for k in given})

    def problems(self) -> list[str]:
        """What is wrong with the parameters (empty when fine)."""
        out = []
        if self.interval is not None and self.interval < 1:
            out.append(f"--cache-interval must be at least 1, got {self.interval}")
        if self.warmup is not None and self.warmup < 0:
            out.append(f"--cache-warmup must be 0 or more, got {self.warmup}")
        if self.order is not None and self.order not in (0, 1, 2):
            out.append(f"--cache-order must be 0, 1 or 2, got {self.order}")
        if self.mode == "fixed" and self.order == 2:
            out.append("--cache fixed extrapolates with order 0 or 1")
        if self.threshold is not None and not self.threshold >= 0:
            out.append(f"--cache-threshold must be 0 or more, got {self.threshold}")
        return out

    def identity(self) -> dict:
        """The settings the pixels depend on: nothing for ``none``, else the mode and the parameters it uses."""
        if self.mode == "none":
            return {}
        params = {f"cache_{k}": getattr(self, k) for k in ("interval", "warmup", "order", "threshold")}
        return {"cache": self.mode, **{k: v for k, v in params.items() if v is not None}}

    def describe(self, steps: int) -> str:
        """One line saying what the mode does at `steps` steps."""
        if self.mode == "none":
            return "none (every step computes every block)"
        if self.mode == "fixed":
            n = len(full_steps(steps, self.warmup, self.interval))
            how = "reused" if self.order == 0 else "extrapolated linearly"
            return (f"fixed: {n} of {steps} steps run the blocks (the first {self.warmup}, every {self.interval} steps "
                    f"after, the last); the others add the block stack's residual {how}")
        if self.mode == "fbc":
            return f"fbc (diffusers' First Block Cache, threshold {self.threshold}); skipped steps depend on the weights"
        if self.mode == "taylorseer":
            return (f"taylorseer (diffusers' TaylorSeer: attention computed in the first {self.warmup} steps and every "
                    f"{self.interval} steps after, order-{self.order} Taylor prediction between)")
        if self.mode == "pab":
            return f"pab (diffusers' Pyramid Attention Broadcast: attention reused for {self.interval - 1} of every {self.interval} steps at timesteps 100-800)"
        return (f"fastercache (diffusers' FasterCache, its CogVideoX settings: attention every {self.interval} steps "
                "below timestep 681, the unconditional half every 5th step)")


def is_full_step(i: int, steps: int, warmup: int, interval: int) -> bool:
    """Whether ``fixed`` runs every block on step `i` of `steps`: steps 0..warmup-1, every `interval`-th after,
    and the last."""
    return i < warmup or (i - warmup) % interval == 0 or i == steps - 1


def full_steps(steps: int, warmup: int, interval: int) -> list[int]:
    """The steps on which ``fixed`` runs every block."""
    return [i for i in range(steps) if is_full_step(i, steps, warmup, interval)]
