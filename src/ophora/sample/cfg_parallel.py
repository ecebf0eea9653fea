"""Classifier-free-guidance parallelism: the two halves of a CFG batch run on two ranks.

With guidance, every denoising step runs the transformer on a batch of two (unconditional, conditional).
Two ranks can each run one half and exchange the results, so one video takes about half the time. Both
ranks follow the same seeded trajectory and receive identical gathered outputs, so their latents stay equal.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def pair_groups(world: int) -> list:
    """One process group per consecutive pair of ranks; every rank must call this, in the same order."""
    return [dist.new_group([2 * p, 2 * p + 1]) for p in range(world // 2)]


def split_cfg_batch(transformer: torch.nn.Module, group, index: int) -> None:
    """Make `transformer` compute only half `index` (0: unconditional, 1: conditional) of a CFG batch of
    two and all-gather the other half from the partner rank in `group`. Batches of one pass through."""
    forward = transformer.forward

    def halved_forward(hidden_states, encoder_hidden_states, timestep, **kwargs):
        if hidden_states.shape[0] != 2:
            return forward(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                           timestep=timestep, **kwargs)
        kwargs["return_dict"] = False
        half = slice(index, index + 1)
        out = forward(hidden_states=hidden_states[half], encoder_hidden_states=encoder_hidden_states[half],
                      timestep=timestep[half], **kwargs)[0].contiguous()
        parts = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(parts, out, group=group)
        return (torch.cat(parts),)

    transformer.forward = halved_forward
