"""Speed settings for sampling: the attention kernel, regional `torch.compile` of the transformer blocks, and
step caching (step_cache.py).

Regional compilation compiles the repeated CogVideoX block once (every block shares the compiled code,
since its weights are graph inputs) instead of the whole model: far less compile time for the same
kernels. It is on by default on a CUDA GPU (`--no-compile` turns it off); it changes only bf16 rounding.
The compiled code lands in inductor's on-disk cache (`TORCHINDUCTOR_CACHE_DIR`, by default under the
system's temporary folder), so later runs on the same machine and software load it instead of compiling
again; the first block call's time (compiling or loading) is logged.

Each block's `forward` is compiled (not the module's call), so step-cache hooks that wrap whole blocks
(``fixed``, ``fbc``) sit outside the compiled code; modes that hook inside the blocks run them uncompiled.
"""

from __future__ import annotations

import logging
import time

import torch

from ophora.core.attention import use_attention
from ophora.sample.cache_spec import BLOCK_LEVEL, CacheSpec
from ophora.sample.step_cache import remove_cache, use_cache

log = logging.getLogger(__name__)

# Measured on an H200 (one CFG step of the 2b transformer with FA3): inductor's default mode 0.451 s after 16 s of
# compiling, max-autotune-no-cudagraphs 0.449 s after 203 s: the matmuls stay cuBLAS's either way.
COMPILE_MODE = "default"


class _CompiledForward:
    """A block's compiled forward. The first call of any block (the compiling, or loading it from the cache) is
    timed and logged; if a call fails in the compiled code (no working compiler or Triton, an op dynamo cannot
    trace, the recompile limit reached), every block of the model runs its eager forward from then on."""

    def __init__(self, eager, compiled, status: dict):
        self.eager, self.compiled, self.status = eager, compiled, status

    def __call__(self, *args, **kwargs):
        if self.status.get("failed"):
            return self.eager(*args, **kwargs)
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 (the block is a pure function: running it eagerly is exact)
            first = (str(exc).strip().splitlines() or [""])[0]
            log.warning("compile: failed (%s: %s); the blocks run uncompiled", type(exc).__name__, first[:200])
            self.status["failed"] = True
            return self.eager(*args, **kwargs)
        if not self.status.get("ok"):
            self.status["ok"] = True
            log.info("compile: first block call %.1f s (compiling, or loading inductor's on-disk cache)",
                     time.perf_counter() - start)
        return out


def compile_blocks(transformer, mode: str | None = COMPILE_MODE, backend: str = "inductor") -> int:
    """`torch.compile` each transformer block's forward in place (compiled on first use); returns how many.
    Blocks compiled already stay as they are."""
    blocks = list(getattr(transformer, "transformer_blocks", []))
    # each (video size, attention kernel) takes two graphs (the first block's input has other strides): room for
    # a Generator's per-call sizes before dynamo's default limit of 8 would stop compiling
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    status: dict = {}
    for block in blocks:
        if "_ophora_eager_forward" in vars(block):
            continue
        block._ophora_eager_forward = eager = block.forward
        compiled = torch.compile(eager, fullgraph=True, dynamic=False, backend=backend,
                                 **({"mode": mode} if backend == "inductor" and mode else {}))
        block.forward = _CompiledForward(eager, compiled, status)
    return len(blocks)


def uncompile_blocks(transformer) -> None:
    """Undo `compile_blocks`: every block runs eagerly again."""
    for block in getattr(transformer, "transformer_blocks", []):
        if "_ophora_eager_forward" in vars(block):
            block.forward = vars(block).pop("_ophora_eager_forward")


def configure_speed(pipe, attention: str, compile: bool | None, device: str, cache: CacheSpec | None = None,
                    guidance: float = 6.0, steps: int = 50, lora: bool = False) -> str:
    """Install ophora's attention processor with the kernel for `attention`, compile the blocks (`compile`
    None: on a CUDA GPU without LoRA layers) and put the step cache on, each with a log line; returns the kernel
    in use."""
    cache = cache or CacheSpec()
    kernel = use_attention(pipe.transformer, attention, device)
    remove_cache(pipe.transformer)  # its hooks wrap the blocks' forward: off before that changes
    wanted = compile if compile is not None else device.startswith("cuda") and not lora
    on = False
    if not wanted:
        why = "--no-compile" if compile is False else ("LoRA layers; --compile to try" if lora and
                                                       device.startswith("cuda") else f"the device is {device}")
        log.info("compile: off (%s)", why)
    elif not device.startswith("cuda"):
        log.info("compile: off (regional torch.compile is for the GPU; the device is %s)", device)
    elif cache.mode not in BLOCK_LEVEL:
        log.info("compile: off (--cache %s hooks inside the blocks, which cannot be compiled whole)", cache.mode)
    else:
        on = True
    if on:
        n = compile_blocks(pipe.transformer)
        log.info("compile: %d transformer blocks with torch.compile (mode %s)", n, COMPILE_MODE)
    else:
        uncompile_blocks(pipe.transformer)
    use_cache(pipe, cache, guidance, steps)
    return kernel
