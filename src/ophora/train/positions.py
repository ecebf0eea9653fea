"""Rotary position embeddings for CogVideoX 1.0 models that use them (CogVideoX-5b), as CogVideoXPipeline makes them."""

from __future__ import annotations

import torch


def rotary_embeddings(config, latent_frames: int, latent_height: int, latent_width: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(cos, sin) for a latent video of the given size; None for models with sin-cos positions (CogVideoX-2b)."""
    if not config.get("use_rotary_positional_embeddings", False):
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p = config.patch_size
    grid = (latent_height // p, latent_width // p)
    crops = get_resize_crop_region_for_grid(grid, config.sample_width // p, config.sample_height // p)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid,
                                   temporal_size=latent_frames, device=device)
