"""Speed switches on the transformer's blocks: selective activation checkpointing and regional compilation.

Checkpointing every block (diffusers' `enable_gradient_checkpointing`) recomputes the whole forward pass
in the backward pass: about a third more work. With `checkpoint_blocks: N` only the first N blocks are
recomputed; the rest keep their activations, trading memory for speed. `compile_blocks` compiles each
block with torch.compile (the blocks are identical, so one compilation serves all of them). Both only
replace each block's `forward`/call, so parameter names, checkpoints and exports are unchanged.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def configure_blocks(transformer, gradient_checkpointing: bool, checkpoint_blocks: int | None, compile_blocks: bool) -> None:
    """Apply checkpointing (all blocks, or the first `checkpoint_blocks`) and per-block compilation in place."""
    blocks = transformer.transformer_blocks
    if gradient_checkpointing and checkpoint_blocks is None:
        transformer.enable_gradient_checkpointing()
    elif gradient_checkpointing:
        for block in blocks[:checkpoint_blocks]:
            block.forward = _checkpointed(block.forward)
    if compile_blocks:
        for block in blocks:
            block.compile()
