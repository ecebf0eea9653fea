"""A CogVideoX-architecture pipeline small enough to train from scratch, with a VAE trained on the clips it will see.

A random VAE's latents are meaningless (the transformer would learn to denoise noise that decodes to noise),
so `make_mini_model` first trains a small `AutoencoderKLCogVideoX` to reconstruct frame windows of the given
clips, sets its `scaling_factor` so the scaled latents have unit variance (as Stable Diffusion's was chosen),
and writes it with a random T5 text encoder and a random transformer of `random_pipeline.SIZES[size]` in
the diffusers layout (safetensors). The text encoder stays random: the transformer learns the instruction
from its (fixed) token features, which tell phases apart by their words. Used by `benchmarks/mini_ophora.py`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ophora.core.errors import InputError
from ophora.core.files import atomic_dir, write_json
from ophora.core.media import read_video
from ophora.synthetic.random_pipeline import random_pipeline, train_tokenizer

log = logging.getLogger(__name__)

KL_WEIGHT = 1e-6  # keeps the posterior near a Gaussian without blurring the reconstructions


def edge_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the horizontal and vertical pixel differences of `y` and `x` (N, C, F, H, W): a
    gradient-difference term that a blurred edge (thin letters, a logo's outline) costs more than plain L1 does."""
    return ((y.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (y.diff(dim=-2) - x.diff(dim=-2)).abs().mean()) / 2


def frame_windows(clips: list[Path], frames: int, height: int, width: int, fps: float = 8.0) -> torch.Tensor:
    """Every non-overlapping window of `frames` frames (taken at about `fps`) of the clips, resized to
    height x width, as uint8 (N, 3, frames, H, W)."""
    windows = []
    for clip in clips:
        video, clip_fps = read_video(clip)
        step = max(1, round((clip_fps or fps) / fps))
        video = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in video[::step]])
        windows += [video[i:i + frames] for i in range(0, len(video) - frames + 1, frames)]
    if not windows:
        raise InputError(f"none of the {len(clips)} clips has {frames} frames at {fps:g} fps to train the VAE on")
    return torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).contiguous()


def _to_unit(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return batch.to(device, non_blocking=True).float() / 127.5 - 1.0


def psnr(vae, windows: torch.Tensor, device: torch.device, batch: int = 4) -> float:
    """Mean reconstruction PSNR (dB, frames in [0, 1]) of the VAE on `windows` (posterior mean)."""
    errors = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = _to_unit(windows[i:i + batch], device)
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            errors.append(((y - x) / 2).pow(2).flatten(1).mean(1).cpu())
    return float((-10 * torch.log10(torch.cat(errors).clamp_min(1e-10))).mean())


def train_vae(vae, windows: torch.Tensor, steps: int, batch: int, lr: float, device: torch.device, seed: int,
              edge_weight: float = 0.0) -> list[float]:
    """Train `vae` in place to reconstruct `windows` (L1 + MSE + a small KL, plus `edge_weight` times `edge_loss`);
    returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                       enabled=False)
    vae.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:  # short warm-up, then cosine decay
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = _to_unit(windows[torch.randint(len(windows), (batch,), generator=generator)], device)
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)  # mirrored views: more data from few clips
        with autocast:
            posterior = vae.encode(x).latent_dist
            y = vae.decode(posterior.sample()).sample
        y = y.float()
        loss = (y - x).abs().mean() + (y - x).pow(2).mean() + KL_WEIGHT * posterior.kl().mean()
        if edge_weight:
            loss = loss + edge_weight * edge_loss(y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            log.info("VAE step %d/%d: loss %.4f", step + 1, steps, losses[-1])
    vae.eval()
    return losses


def latent_scale(vae, windows: torch.Tensor, device: torch.device, batch: int = 4) -> float:
    """1 / the standard deviation of the posterior means over `windows`: the VAE's scaling factor."""
    with torch.no_grad():
        means = [vae.encode(_to_unit(windows[i:i + batch], device)).latent_dist.mode().float().cpu()
                 for i in range(0, min(len(windows), 64), batch)]
    return float(1.0 / torch.cat(means).std().clamp_min(1e-6))


def make_mini_model(folder: str | Path, clips: list[Path], size: str, frames: int, height: int, width: int,
                    vae_steps: int, vae_batch: int = 8, vae_lr: float = 1e-3, vae_edge_weight: float = 0.0,
                    check_clips: list[Path] = (), device: str = "cpu", seed: int = 0) -> dict:
    """Write a CogVideoX pipeline of `size` whose VAE is trained on `clips` into `folder` (made atomically).

    Returns the training record (also written to `folder/ophora_mini.json`): VAE steps, losses, seconds, the
    scaling factor and the reconstruction PSNR on `check_clips` (held-out clips; the training clips if none).
    """
    folder, dev = Path(folder), torch.device(device)
    windows = frame_windows(clips, frames, height, width)
    check = frame_windows(list(check_clips), frames, height, width) if check_clips else windows[:16]
    with atomic_dir(folder) as tmp:
        train_tokenizer(tmp / "tokenizer")
        pipe = random_pipeline(size, tmp / "tokenizer", seed)
        vae = pipe.vae.to(dev)
        before = psnr(vae, check, dev)
        start = time.perf_counter()
        losses = train_vae(vae, windows, vae_steps, vae_batch, vae_lr, dev, seed, vae_edge_weight)
        seconds = time.perf_counter() - start
        scale = latent_scale(vae, windows, dev)
        vae.register_to_config(scaling_factor=scale)
        record = {"size": size, "video": {"frames": frames, "height": height, "width": width},
                  "vae": {"steps": vae_steps, "batch": vae_batch, "lr": vae_lr, "edge_weight": vae_edge_weight,
                          "windows": len(windows),
                          "seconds": round(seconds, 2), "first_loss": losses[0], "last_loss": losses[-1],
                          "scaling_factor": scale, "psnr_untrained": before, "psnr": psnr(vae, check, dev),
                          "psnr_on": "held-out clips" if check_clips else "training clips"},
                  "text_encoder": "random T5 (not trained)", "transformer": "random (trained by ophora train)"}
        pipe.vae = vae.cpu()
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "ophora_mini.json", record)
    log.info("wrote the mini model to %s (VAE PSNR %.1f dB, was %.1f)", folder, record["vae"]["psnr"], before)
    return record
