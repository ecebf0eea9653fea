"""The latent cache: one safetensors file per clip plus `cache.json` and `index.csv`.

Layout of a cache folder::

    cache.json          model, encoder fingerprint, frame settings, dtype, versions, counts
    index.csv           clip id, file, instruction, frames, height, width, latent shape
    rejects.csv         clip id, reason (clips that could not be prepared)
    clips/<clip id>.safetensors
        latent_mean, latent_logvar   (C, F', H/8, W/8)  the VAE's posterior, unscaled
        prompt_embeds                (226, D)           T5 last hidden state
        metadata: clip id, instruction, source frames/fps/size, frame indices

The encoder fingerprint hashes the VAE's and text encoder's configs and a sample of their weight files,
so a cache is recognised as valid for any pipeline that shares the same VAE and T5 (a TPT output shares
the base model's), and refused for any other (core/models.py: `encoder_fingerprint`).
"""

from __future__ import annotations

import csv
from collections import Counter
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ophora.core.errors import InputError
from ophora.core.files import atomic_path, write_csv

CACHE_FORMAT = 1
INDEX_COLUMNS = ["clip id", "file", "instruction", "frames", "height", "width", "latent shape"]


def clip_file(cache: Path, clip_id: str) -> Path:
    return cache / "clips" / f"{clip_id}.safetensors"


def save_clip(cache: Path, clip_id: str, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write one clip's tensors atomically, with its metadata as JSON strings."""
    with atomic_path(clip_file(cache, clip_id)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})


def read_clip_header(path: Path) -> tuple[dict, dict[str, list[int]]]:
    """Metadata and tensor shapes of a clip file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return metadata, shapes


def load_clip(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@dataclass(frozen=True)
class CacheEntry:
    clip_id: str
    file: str
    latent_shape: tuple[int, ...]


def read_cache_info(cache: Path) -> dict:
    """cache.json of a finished cache, or InputError naming the problem."""
    info_path = cache / "cache.json"
    if not cache.is_dir():
        raise InputError(f"latent cache not found: {cache} (make it with `ophora prepare DATASET --model M --out {cache}`)")
    if not info_path.is_file() or not (cache / "index.csv").is_file():
        raise InputError(f"{cache} is not a finished latent cache (no cache.json/index.csv); rerun `ophora prepare` to finish it")
    info = json.loads(info_path.read_text())
    if info.get("format") != CACHE_FORMAT:
        raise InputError(f"{cache} has cache format {info.get('format')}, this ophora reads {CACHE_FORMAT}; prepare it again")
    return info


def read_index(cache: Path, subset: set[str] | None = None) -> list[CacheEntry]:
    """The clips of a cache (optionally only those in `subset`), in index order."""
    with (cache / "index.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    entries = [CacheEntry(r["clip id"], r["file"], tuple(json.loads(r["latent shape"]))) for r in rows]
    if subset is not None:
        entries = [e for e in entries if e.clip_id in subset]
    return entries


def write_index(cache: Path) -> list[dict]:
    """Scan the clip files and write index.csv (sorted by clip id); returns its rows."""
    rows = []
    for path in sorted((cache / "clips").glob("*.safetensors")):
        if path.name.startswith("."):
            continue
        meta, shapes = read_clip_header(path)
        rows.append({"clip id": meta["clip id"], "file": f"clips/{path.name}", "instruction": meta["instruction"],
                     "frames": len(meta["frame_indices"]), "height": meta["size"][0], "width": meta["size"][1],
                     "latent shape": json.dumps(shapes["latent_mean"])})
    write_csv(cache / "index.csv", INDEX_COLUMNS, rows)
    return rows


def cache_video_settings(info: dict, entries: list[CacheEntry]) -> dict:
    """The video a model trained on these clips makes by default: the most common latent shape, in pixels.

    CogVideoX's VAE keeps every 4th frame (plus the first) and 1 pixel in 8 along each side.
    """
    shapes = Counter(e.latent_shape for e in entries)
    (_, latent_frames, height, width), _ = max(shapes.items(), key=lambda item: (item[1], item[0]))
    return {"frames": (latent_frames - 1) * 4 + 1, "height": height * 8, "width": width * 8,
            "fps": info["frames"]["target_fps"]}
