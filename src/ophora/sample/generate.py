"""Loading and configuring the pipeline for sampling, and generating one video."""

from __future__ import annotations

import numpy as np
import torch

from ophora.core.errors import InputError
from ophora.core.media import to_uint8
from ophora.core.models import load_pipeline, parse_dtype
from ophora.core.vae_speed import speed_up_vae
from ophora.sample.config import SampleConfig
from ophora.sample.host_timesteps import keep_timesteps_on_host
from ophora.sample.jobs import Job
from ophora.sample.speed import configure_speed
from ophora.sample.step_cache import reset as reset_cache


def prepare_pipeline(config: SampleConfig, device: str, videos: int | None = None):
    """Load the pipeline named by `config.model` and configure it for sampling `videos` videos (None: not known)."""
    pipe = load_pipeline(config.model, device=device, dtype=parse_dtype(config.dtype, device), scheduler=config.scheduler)
    return configure_pipeline(pipe, config, device, videos)


def configure_pipeline(pipe, config: SampleConfig, device: str, videos: int | None = None):
    """Apply LoRA, fused attention projections, the attention kernel, compiling and step caching, host-side
    timesteps, the VAE's layout, compiling (for a run of `videos` videos) and memory mode, and progress settings."""
    if config.lora:
        try:
            pipe.load_lora_weights(config.lora, adapter_name="ophora")
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load LoRA weights from {config.lora}: {exc}") from None
        pipe.set_adapters(["ophora"], [config.lora_scale])
    fuse = config.fuse_qkv if config.fuse_qkv is not None else device.startswith("cuda")
    if fuse and not config.lora:  # LoRA layers wrap the separate q/k/v projections
        pipe.transformer.fuse_qkv_projections()
    configure_speed(pipe, config.attention, config.compile, device, config.cache_spec, config.guidance, config.steps,
                    lora=bool(config.lora))
    keep_timesteps_on_host(pipe, device)
    compile_vae = config.compiles_decoder(device, videos)  # compiled, it is fastest in channels-last layout
    speed_up_vae(pipe.vae, config.vae_channels_last or compile_vae, compile_vae, device, "decoder", "sample")
    tiling = config.vae_tiling == "on" or (config.vae_tiling == "auto" and not _untiled_decode_fits(config, device))
    if tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    show_steps = config.step_progress if config.step_progress is not None else device.startswith("cuda")
    pipe.set_progress_bar_config(disable=not show_steps, leave=False, position=1, desc="steps")
    return pipe


def _untiled_decode_fits(config: SampleConfig, device: str) -> bool:
    """Whether decoding the whole video at once fits in free GPU memory (always true on the CPU)."""
    if not device.startswith("cuda"):
        return True
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    # Measured: 18.5 GiB peak for 49x480x720 in bf16; activation memory scales with pixels x frames.
    need = 18.5 * 2**30 * (config.frames * config.height * config.width) / (49 * 480 * 720)
    return free > 1.3 * need


def generate(pipe, config: SampleConfig, job: Job, device: str, decode: bool = True) -> np.ndarray | None:
    """One video as uint8 frames (F, H, W, 3); with `decode=False` only the denoising runs."""
    generator = torch.Generator(device=device).manual_seed(job.seed)
    reset_cache(pipe.transformer)  # the pipeline resets it after a video; after a failed one, this does
    frames = pipe(
        prompt=job.prompt,
        negative_prompt=config.negative_prompt or None,
        height=config.height,
        width=config.width,
        num_frames=config.frames,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        use_dynamic_cfg=config.dynamic_cfg,
        generator=generator,
        output_type="np" if decode else "latent",
    ).frames[0]
    return to_uint8(frames) if decode else None
