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
import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ophora.core.errors import InputError
from ophora.core.files import NAME_MAX, PARTIAL, atomic_path, write_csv

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INDEX_COLUMNS = ["clip id", "file", "instruction", "frames", "height", "width", "latent shape"]
INFO_KEYS = ("format", "model", "encoder_fingerprint", "vae_scaling_factor", "latent_shapes", "frames")
TENSORS = ("latent_mean", "latent_logvar", "prompt_embeds")
CLIP_SUFFIX = ".safetensors"
REBUILD = "rerun the `ophora prepare` that made the cache (same dataset, --model and --out) to rebuild it"


def clip_file(cache: Path, clip_id: str) -> Path:
    """`clips/<clip id>.safetensors`; when that name would pass the file-system limit (ids of up to NAME_MAX
    bytes are valid), the id's longest prefix that fits, `~` and a hash of the whole id. Readers take the file
    from index.csv, and the index takes each file's clip id from the file's metadata."""
    name = f"{clip_id}{CLIP_SUFFIX}"
    if len(name.encode()) <= NAME_MAX:
        return cache / "clips" / name
    tail = f"~{hashlib.sha256(clip_id.encode()).hexdigest()[:16]}{CLIP_SUFFIX}"
    prefix = clip_id.encode()[:NAME_MAX - len(tail)].decode(errors="ignore")  # no character cut in half
    return cache / "clips" / f"{prefix}{tail}"


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
    """A clip's tensors, or InputError naming the file when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"cache clip {path} cannot be read ({' '.join(str(exc).split())}); {REBUILD}") from None


def clip_problem(path: Path, latent_shape: tuple[int, ...] | None = None) -> str:
    """What is wrong with a clip file, from its header alone ('' when nothing is): missing, garbage, truncated,
    lacking tensors or metadata, or shapes that disagree with each other or with `latent_shape` (the index's)."""
    try:
        meta, shapes = read_clip_header(path)
    except FileNotFoundError:
        return "the file is missing"
    except (OSError, SafetensorError, ValueError, RecursionError) as exc:  # ValueError: metadata that is not JSON
        return f"unreadable: {' '.join(str(exc).split())}"
    missing = [k for k in TENSORS if k not in shapes]
    if missing:
        return f"no {', '.join(missing)} tensor"
    mean = tuple(shapes["latent_mean"])
    if len(mean) != 4 or tuple(shapes["latent_logvar"]) != mean or len(shapes["prompt_embeds"]) != 2:
        return f"tensor shapes {shapes} are not those of a clip"
    if latent_shape is not None and mean != tuple(latent_shape):
        return f"latent shape {list(mean)} differs from the index's {list(latent_shape)}"
    expected = {"clip id": str, "instruction": str, "size": list, "frame_indices": list}
    wrong = [k for k, kind in expected.items() if not isinstance(meta.get(k), kind)]
    if wrong or len(meta["size"]) != 2:
        return f"its metadata lacks {', '.join(wrong) or 'a valid size'}"
    return ""


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
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{info_path} is damaged ({type(exc).__name__}); {REBUILD}") from None
    if not isinstance(info, dict) or any(k not in info for k in INFO_KEYS):
        raise InputError(f"{info_path} lacks the cache's settings ({', '.join(INFO_KEYS)}); {REBUILD}")
    if info.get("format") != CACHE_FORMAT:
        raise InputError(f"{cache} has cache format {info.get('format')}, this ophora reads {CACHE_FORMAT}; prepare it again")
    return info


def _entry(row: dict) -> CacheEntry:
    shape = json.loads(row["latent shape"])
    file = PurePosixPath(row["file"])
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"latent shape {row['latent shape']!r} of {row['clip id']!r}")
    if file.is_absolute() or ".." in file.parts or file.parts[:1] != ("clips",):
        raise ValueError(f"file {row['file']!r} is not inside the cache's clips/")
    return CacheEntry(row["clip id"], row["file"], tuple(shape))


def read_index(cache: Path, subset: set[str] | None = None) -> list[CacheEntry]:
    """The clips of a cache (optionally only those in `subset`), in index order; InputError if index.csv is damaged."""
    path = cache / "index.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("clip id", "file", "latent shape") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"no {', '.join(missing)} column")
            entries = [_entry(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        what = f"no column {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path} is damaged ({what}); {REBUILD}") from None
    if subset is not None:
        entries = [e for e in entries if e.clip_id in subset]
    return entries


def cache_state(cache: Path, info: dict, entries: list[CacheEntry]) -> str:
    """What a training run read from a cache, as a short hash: its `info` (cache.json, but when and by which
    versions it was written: a prepare rerun that changed nothing rewrites those), index.csv, and each listed clip
    file's size and header (its metadata names the instruction and the source video's identity, so a clip prepared
    again from changed inputs differs; a copy with new file times does not; headers only: 160K clips cost seconds)."""
    kept = {k: v for k, v in info.items() if k not in ("written", "versions")}
    h = hashlib.sha256(json.dumps(kept, sort_keys=True).encode() + (cache / "index.csv").read_bytes())
    for e in entries:
        header = read_clip_header(cache / e.file)
        h.update(json.dumps([e.file, (cache / e.file).stat().st_size, header], sort_keys=True).encode())
    return h.hexdigest()[:16]


def intact_entries(cache: Path, entries: list[CacheEntry]) -> tuple[list[CacheEntry], list[tuple[CacheEntry, str]]]:
    """The entries whose clip files are intact (headers checked, in threads), and the others with their problem."""
    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(lambda e: clip_problem(cache / e.file, e.latent_shape), entries))
    return ([e for e, p in zip(entries, problems) if not p], [(e, p) for e, p in zip(entries, problems) if p])


def write_index(cache: Path, clip_ids: set[str] | None = None) -> list[dict]:
    """Scan the clip files and write index.csv (sorted by clip id); returns its rows. Damaged files are left out,
    and with `clip_ids` (the dataset's) the clips of other datasets encoded into the same folder."""
    rows, foreign = [], 0
    for path in sorted((cache / "clips").glob(f"*{CLIP_SUFFIX}")):
        if path.name.startswith(".") and PARTIAL in path.name:  # a file being written (an id may start with a dot)
            continue
        problem = clip_problem(path)
        if problem:
            log.warning("cache clip %s left out of the index: %s", path, problem)
            continue
        meta, shapes = read_clip_header(path)
        if clip_ids is not None and meta["clip id"] not in clip_ids:
            foreign += 1
            continue
        rows.append({"clip id": meta["clip id"], "file": f"clips/{path.name}", "instruction": meta["instruction"],
                     "frames": len(meta["frame_indices"]), "height": meta["size"][0], "width": meta["size"][1],
                     "latent shape": json.dumps(shapes["latent_mean"])})
    if foreign:
        log.warning("%d clip files in %s are not in this dataset; left out of the index", foreign, cache / "clips")
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
