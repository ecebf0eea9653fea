"""Speed settings for sampling: the attention kernel and regional `torch.compile` of the transformer blocks.

Regional compilation compiles the repeated CogVideoX block once (every block shares the compiled code,
since its weights are graph inputs) instead of the whole model: far less compile time for the same
kernels. The compiled code lands in inductor's on-disk cache, so later runs on the same machine and
software load it instead of compiling again.
"""

from __future__ import annotations

import logging


from ophora.core.attention import use_attention

log = logging.getLogger(__name__)

# Measured on an H200 (one CFG step of the 2b transformer with FA3): inductor's default mode 0.451 s after 16 s of
# compiling, max-autotune-no-cudagraphs 0.449 s after 203 s: the matmuls stay cuBLAS's either way.
COMPILE_MODE = "default"


def compile_blocks(transformer, mode: str | None = COMPILE_MODE, backend: str = "inductor") -> int:
    """`torch.compile` each transformer block in place (compiled on first use); returns how many."""
    blocks = list(getattr(transformer, "transformer_blocks", []))
    for block in blocks:
        block.compile(fullgraph=True, dynamic=False, backend=backend,
                      **({"mode": mode} if backend == "inductor" and mode else {}))
    return len(blocks)


def configure_speed(pipe, attention: str, compile: bool, device: str) -> str:
    """Install ophora's attention processor with the kernel for `attention`, and compile the blocks if asked;
    returns the kernel in use."""
    kernel = use_attention(pipe.transformer, attention, device)
    if compile:
        if not device.startswith("cuda"):
            log.info("compile: off (regional torch.compile is for the GPU; the device is %s)", device)
        else:
            n = compile_blocks(pipe.transformer)
            log.info("compile: %d transformer blocks with torch.compile (mode %s); the first video pays the compile",
                     n, COMPILE_MODE)
    return kernel
