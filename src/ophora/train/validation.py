"""Validation videos during training: the live transformer with the base model's text encoder and VAE."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ophora.core.media import to_uint8, write_video
from ophora.core.models import make_scheduler
from ophora.train.config import TrainConfig

log = logging.getLogger(__name__)


class Validator:
    """Renders the validation prompts with the transformer being trained (its weights are shared, not copied)."""

    def __init__(self, base: Path, transformer: torch.nn.Module, device: torch.device, dtype: torch.dtype):
        from diffusers import CogVideoXPipeline

        self.pipe = CogVideoXPipeline.from_pretrained(base, transformer=transformer, torch_dtype=dtype)
        self.pipe.scheduler = make_scheduler("dpm", self.pipe.scheduler.config)
        self.pipe.text_encoder.to(device)
        self.pipe.vae.to(device)
        self.pipe.set_progress_bar_config(disable=True)

    def render(self, config: TrainConfig, video: dict, out: Path, autocast) -> list[tuple[Path, np.ndarray]]:
        """Write one video per prompt to `out/<i>.mp4` (at the cache's frame settings unless the config sets
        them); returns the paths with each video's middle frame."""
        frames = config.validation_frames or video["frames"]
        height, width = config.validation_height or video["height"], config.validation_width or video["width"]
        results = []
        self.pipe.transformer.eval()
        for i, prompt in enumerate(config.validation_prompts):
            generator = torch.Generator().manual_seed(config.seed + i)
            with torch.no_grad(), autocast():
                result = self.pipe(prompt=prompt, num_frames=frames, height=height, width=width,
                                   num_inference_steps=config.validation_steps,
                                   guidance_scale=config.validation_guidance, use_dynamic_cfg=True,
                                   generator=generator, output_type="np").frames[0]
            pixels = to_uint8(result)
            path = write_video(out / f"{i}.mp4", pixels, fps=video["fps"])
            results.append((path, pixels[len(pixels) // 2]))
        self.pipe.transformer.train()
        log.info("wrote %d validation videos to %s", len(results), out)
        return results
