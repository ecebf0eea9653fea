"""Step caching for sampling: skip transformer work on some denoising steps by reusing earlier steps' results.

Consecutive denoising steps change the transformer's internal features little, so some steps can reuse what
an earlier step computed. Every mode is opt-in and inexact (`--cache`, default ``none``):

- ``fixed`` (ophora's): the first `warmup` steps, then every `interval`-th step, and the last step run every
  block; on the others no block runs, and the residual the block stack adds (its output minus its input, for
  the video and the text tokens) is taken from the last full step (`order` 0) or extrapolated linearly from the
  last two full steps (`order` 1), then added to this step's input. The skipped steps depend only on the
  number of steps, never on the weights or the prompt, so the saving is known in advance (`full_steps`).
- ``fbc``: diffusers' First Block Cache. The first block always runs; the others are skipped while its residual
  differs from the last full step's by less than `threshold` (mean absolute difference relative to its mean
  magnitude). How many steps are skipped depends on the weights.
- ``taylorseer``: diffusers' TaylorSeer. Each attention layer's output is computed in the first `warmup` steps
  and every `interval`-th step after, and predicted by a Taylor expansion (`order`) in between; the
  feed-forward layers always run.
- ``pab``: diffusers' Pyramid Attention Broadcast. Each attention layer's output is reused for `interval` - 1
  steps while the timestep is inside (100, 800).
- ``fastercache``: diffusers' FasterCache with the settings of its CogVideoX example: attention outputs reused
  every other step (`interval`) below timestep 681, and the unconditional half of classifier-free guidance
  computed every fifth step only, approximated from the conditional half in between.

MagCache (also in diffusers) is not offered: it needs magnitude ratios calibrated on the trained checkpoint.
Whether a mode keeps the videos good can only be judged with trained weights: random weights measure speed,
and the error against exact sampling only as a number without a meaning for quality.

The hooks are diffusers' `ModelHook`s on the transformer blocks (or their attention layers); ``fixed`` and
``fbc`` wrap whole blocks, so they work with regional `torch.compile` of the blocks (speed.py), the others
hook inside the blocks and run them uncompiled. The pipeline resets every hook's state after each video;
`reset` does so before one too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    HookRegistry,
    ModelHook,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    faster_cache,
)

from ophora.sample.cache_spec import CacheSpec, is_full_step

log = logging.getLogger(__name__)

_FIXED_HOOK = "ophora_fixed_step_cache"


class _FixedState:
    """The fixed schedule's step counter and the residuals of the last two full steps."""

    def __init__(self, total_steps: Callable[[], int], warmup: int, interval: int, order: int):
        self.total_steps, self.warmup, self.interval, self.order = total_steps, warmup, interval, order
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.compute = True
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, video residual, text residual)

    def begin_step(self) -> bool:
        """Count one transformer call; whether it runs the blocks."""
        self.step += 1
        self.compute = not self.history or is_full_step(self.step, self.total_steps(), self.warmup, self.interval)
        return self.compute

    def record(self, video: torch.Tensor, text: torch.Tensor) -> None:
        self.history = [*self.history[-1:], (self.step, video, text)]

    def residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The residuals for this skipped step: the last full step's, or a line through the last two (in fp32)."""
        step1, video1, text1 = self.history[-1]
        if self.order == 0 or len(self.history) < 2:
            return video1, text1
        step0, video0, text0 = self.history[0]
        t = (self.step - step1) / (step1 - step0)
        return tuple((r1.float() + t * (r1.float() - r0.float())).to(r1.dtype)
                     for r1, r0 in ((video1, video0), (text1, text0)))


class FixedStepHook(ModelHook):
    """The hook on one block: the first block decides and, on a skipped step, returns input + residual; the
    others pass their input through on a skipped step; the last records the residual on a full step."""

    def __init__(self, state: _FixedState, first: bool, last: bool):
        super().__init__()
        self.state, self.first, self.last = state, first, last
        self._is_stateful = first

    def new_forward(self, module, hidden_states, encoder_hidden_states, *args, **kwargs):
        state = self.state
        if self.first:
            state.inputs = (hidden_states, encoder_hidden_states)
            if not state.begin_step():
                video, text = state.residuals()
                return hidden_states + video, encoder_hidden_states + text
        elif not state.compute:
            return hidden_states, encoder_hidden_states
        out = self.fn_ref.original_forward(hidden_states, encoder_hidden_states, *args, **kwargs)
        if self.last:
            video_in, text_in = state.inputs
            state.record(out[0] - video_in, out[1] - text_in)
        return out

    def reset_state(self, module):
        self.state.reset()
        return module


def _diffusers_config(spec: CacheSpec, pipe, guidance: float):
    """diffusers' config object for the modes it implements."""
    timestep = lambda: pipe.current_timestep  # the pipeline sets it at every step
    if spec.mode == "fbc":
        return FirstBlockCacheConfig(threshold=spec.threshold)
    if spec.mode == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=spec.interval, disable_cache_before_step=spec.warmup,
                                     max_order=spec.order, taylor_factors_dtype=torch.float32,
                                     # diffusers' default patterns (fullmatch on "...attn") miss CogVideoX's "attn1"
                                     cache_identifiers=[r"transformer_blocks\.\d+\.attn1"])
    if spec.mode == "pab":
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=spec.interval,
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=timestep)
    return FasterCacheConfig(  # the values of diffusers' CogVideoX example
        spatial_attention_block_skip_range=spec.interval, spatial_attention_timestep_skip_range=(-1, 681),
        low_frequency_weight_update_timestep_range=(99, 641), high_frequency_weight_update_timestep_range=(-1, 301),
        spatial_attention_block_identifiers=["transformer_blocks"], attention_weight_callback=lambda _: 0.3,
        tensor_format="BFCHW", is_guidance_distilled=guidance <= 1.0, current_timestep_callback=timestep)


def remove_cache(transformer) -> None:
    """Take any step-cache hooks off `transformer` (every step computes every block again)."""
    if getattr(transformer, "is_cache_enabled", False):
        transformer.disable_cache()
    for block in getattr(transformer, "transformer_blocks", []):
        if hasattr(block, "_diffusers_hook"):
            block._diffusers_hook.remove_hook(_FIXED_HOOK, recurse=False)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def use_cache(pipe, spec: CacheSpec, guidance: float = 6.0, steps: int | None = None) -> None:
    """Put `spec`'s hooks on the pipeline's transformer (removing any earlier ones), with one log line."""
    transformer = pipe.transformer
    remove_cache(transformer)
    if spec.mode == "fixed":
        blocks = list(transformer.transformer_blocks)
        state = _FixedState(lambda: len(pipe.scheduler.timesteps), spec.warmup, spec.interval, spec.order)
        for i, block in enumerate(blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                FixedStepHook(state, i == 0, i == len(blocks) - 1), _FIXED_HOOK)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    elif spec.mode != "none":
        level = faster_cache.logger.level  # FasterCache warns on every use that it is experimental (docs/sample.md says so)
        faster_cache.logger.setLevel(logging.ERROR)
        try:
            transformer.enable_cache(_diffusers_config(spec, pipe, guidance))
        finally:
            faster_cache.logger.setLevel(level)
    log.info("step cache: %s", spec.describe(steps if steps is not None else 50))


def reset(transformer) -> None:
    """Clear every step-cache hook's state (the start of a new video)."""
    HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)
