"""The encoders of `ophora prepare`: VAE posteriors of clips and T5 embeddings of instructions, in batches.

Clips of one size bucket (same frames, height and width) are encoded by the VAE together, and their
instructions by T5 together: the same arithmetic as one at a time (each sample is independent in both
networks), with larger kernels. A batch that runs out of GPU memory is encoded in halves; a single clip that
still does not fit is encoded in tiles (`vae.enable_tiling`) from then on, with a warning.
Optional GPU levers (core/vae_speed.py): the VAE in channels-last (NDHWC) layout, its encoder compiled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ophora.prepare.frames import to_vae_input

log = logging.getLogger(__name__)

MAX_TOKENS = 226


def encode_prompts(tokenizer, text_encoder, texts: list[str], device: str) -> torch.Tensor:
    """T5 embeddings (N, 226, D) of `texts`, each exactly as CogVideoXPipeline makes them (padded to 226 tokens,
    no attention mask), computed in one batch."""
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(device))[0]


def encode_videos(vae, videos: list[np.ndarray], device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posteriors (mean, logvar), each (N, C, F', H/8, W/8), of uint8 clips (F, H, W, 3) of one size."""
    batch = to_vae_input(np.stack(videos), device).to(dtype)
    if getattr(vae, "_ophora_channels_last", False):
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        dist = vae.encode(batch).latent_dist
    return dist.mean, dist.logvar


@dataclass
class Encoders:
    """Tokenizer, T5 and VAE on `device`, with the batch size that fits (lowered after an out-of-memory error)."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    device: str
    dtype: torch.dtype
    batch: int = 1

    def encode(self, videos: list[np.ndarray], texts: list[str]) -> list[dict[str, torch.Tensor]]:
        """Per clip: {latent_mean, latent_logvar, prompt_embeds} on the CPU. Out of GPU memory, the clips are
        encoded in halves (and `batch` lowered for the clips to come); a single clip, in tiles."""
        try:
            mean, logvar = encode_videos(self.vae, videos, self.device, self.dtype)
        except torch.OutOfMemoryError:
            if not self.device.startswith("cuda"):
                raise
            torch.cuda.empty_cache()
            if len(videos) > 1:
                half = len(videos) // 2
                self.batch = min(self.batch, half)
                log.warning("prepare: out of GPU memory encoding %d clips at once; batches of %d from now on",
                            len(videos), self.batch)
                return self.encode(videos[:half], texts[:half]) + self.encode(videos[half:], texts[half:])
            if getattr(self.vae, "use_tiling", False):
                raise
            log.warning("prepare: out of GPU memory encoding one clip untiled; encoding in tiles from now on")
            self.vae.enable_tiling()
            return self.encode(videos, texts)
        embeds = encode_prompts(self.tokenizer, self.text_encoder, texts, self.device)
        return [{"latent_mean": m.cpu(), "latent_logvar": v.cpu(), "prompt_embeds": e.cpu()}
                for m, v, e in zip(mean, logvar, embeds)]
