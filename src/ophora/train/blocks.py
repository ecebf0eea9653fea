"""Speed switches on the transformer's blocks: the attention kernel, (selective) activation checkpointing and
regional compilation.

`configure_attention` picks the training attention kernel (`attention: auto|sdpa|fa4`; auto: FlashAttention-4
where it runs, core/fa4.py, else SDPA). fa4 installs ophora's `CogVideoXAttention` processor; sdpa keeps
diffusers' stock processor (SDPA, cuDNN on Hopper, forward and backward), the path measured before fa4.

Checkpointing every block recomputes the whole forward pass in the backward pass: a third more work, of
which attention is more than half at 49x480x720 (17,776 video tokens). `selective_checkpointing` keeps the
attention outputs (about 70 MB per block at 49x480x720) and recomputes only the cheap rest, so attention
never runs twice. Measured on an H100 (benchmarks/results/train_step_h100.json): with `compile_blocks` it
needs no more peak memory than checkpointing everything (26.8 vs 27.3 GiB) and is 1.17x faster; without
compilation it costs about 6.5 GiB more.
`checkpoint_blocks: N` checkpoints only the first N blocks; the others keep all their activations.
`compile_blocks` compiles each block with torch.compile (identical blocks share one compilation). All of
these only replace each block's `forward`/call: parameter names, checkpoints and exports are unchanged.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ophora.core.attention import CogVideoXAttention, choose_kernel
from ophora.core.fa4 import FA4_FORWARD

log = logging.getLogger(__name__)
ATTENTION_OPS = {getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
) if hasattr(torch.ops.aten, name)} | {FA4_FORWARD}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}  # mixed_precision -> dtype


def configure_attention(transformer, requested: str, device: str | torch.device, mixed_precision: str) -> str:
    """Install the training attention kernel chosen for `requested` on `device` (one log line; call before
    `configure_blocks`, which compiles); returns the kernel's name."""
    kernel = choose_kernel(requested, device, AUTOCAST_DTYPES[mixed_precision], training=True)
    if kernel != "sdpa":
        transformer.set_attn_processor(CogVideoXAttention(kernel))
    return kernel


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(forward, selective: bool):
    context = {"context_fn": partial(create_selective_checkpoint_contexts, _keep_attention)} if selective else {}

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **context, **kwargs)

    return run


def configure_blocks(transformer, gradient_checkpointing: bool, checkpoint_blocks: int | None = None,
                     selective: bool = False, compile_blocks: bool = False) -> None:
    """Checkpoint the first `checkpoint_blocks` blocks (all if None), keeping attention outputs if `selective`;
    then compile each block if asked."""
    blocks = transformer.transformer_blocks
    kept = " (attention outputs kept: selective)" if selective else ""
    log.info("transformer blocks: %s; %s", f"{len(blocks[:checkpoint_blocks])} of {len(blocks)} checkpointed{kept}"
             if gradient_checkpointing else "none checkpointed", "each compiled" if compile_blocks else "not compiled")
    if gradient_checkpointing:
        for block in blocks[:checkpoint_blocks]:
            block.forward = _checkpointed(block.forward, selective)
    if compile_blocks:
        for block in blocks:
            block.compile()
