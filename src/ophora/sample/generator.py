"""Load once, generate many: the Python API for notebooks and scripts.

    from ophora.sample import Generator

    gen = Generator("runs/p2ft/final", steps=50, guidance=6.0)       # loads the pipeline once
    frames = gen.generate("Polish the posterior capsule.", seed=1)   # uint8 (frames, height, width, 3)
    gen.save(frames, "capsule.mp4")

The settings are `SampleConfig`'s (the flags of `ophora sample`, as keyword arguments); the video of a prompt
and seed is the one `ophora sample --fixed-seed --seed SEED` makes with the same settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ophora.core.errors import ConfigError
from ophora.core.media import write_video
from ophora.core.ranks import Ranks, pick_device
from ophora.sample.config import SampleConfig, check_video_shape
from ophora.sample.generate import generate, prepare_pipeline
from ophora.sample.jobs import Job

# What may change from one `generate` call to the next without reloading the pipeline.
PER_CALL = ("steps", "guidance", "dynamic_cfg", "negative_prompt", "frames", "height", "width")
# What only matters to `ophora sample`'s batch (prompt files, output folder, ranks).
BATCH_ONLY = ("out", "prompts", "prompt", "prompt_column", "id_column", "videos_per_prompt", "overwrite",
              "cfg_parallel", "fixed_seed", "one_based", "seed")


class Generator:
    """A pipeline loaded once with `ophora sample`'s settings; `generate` makes one video per call."""

    def __init__(self, model: str | Path, **settings):
        from ophora.sample.run import resolve_settings

        fields = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted((set(settings) - fields) | (set(settings) & set(BATCH_ONLY)))
        if unknown:
            raise ConfigError(f"Generator does not take {', '.join(unknown)}: give the seed to generate(), and use "
                              "`ophora sample` for prompt files and output folders")
        config = SampleConfig(model=str(model), out=Path("."), prompt="-", **settings)
        config.check()
        ranks = Ranks(rank=0, world=1, local_rank=0)
        self.config, self.weights = resolve_settings(config, ranks)
        self.device = pick_device(config.device, ranks)
        self.pipe = prepare_pipeline(self.config, self.device)

    def generate(self, prompt: str, seed: int = 42, **settings) -> np.ndarray:
        """One video as uint8 frames (frames, height, width, 3). `settings` change this call only: any of
        steps, guidance, dynamic_cfg, negative_prompt, frames, height, width."""
        other = sorted(set(settings) - set(PER_CALL))
        if other:
            raise ConfigError(f"generate() cannot change {', '.join(other)} (it needs another Generator); "
                              f"per call: {', '.join(PER_CALL)}")
        if not prompt or not prompt.strip():
            raise ConfigError("generate() needs a non-empty prompt")
        config = dataclasses.replace(self.config, **settings)
        check_video_shape(config.frames, config.height, config.width, config.fps)
        if config.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {config.steps}")
        return generate(self.pipe, config, Job("prompt", 0, prompt.strip(), int(seed)), self.device)

    def save(self, frames: np.ndarray, path: str | Path) -> Path:
        """Write frames from `generate` as an H.264 MP4 at the model's frame rate and `qp`."""
        return write_video(Path(path), frames, fps=self.config.fps, qp=self.config.qp)
