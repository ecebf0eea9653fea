"""Clips of phase segments: which frames, decoded once per video into a safetensors cache, and their loader.

A clip is `frames` frames sampled at `fps` (16 at 8 fps: 2 s), each resized so its short side is `size` and
centre-cropped to size x size. A segment gives up to `per_segment` clips in evenly spaced windows (one clip
spread over the segment when it is shorter than a window). Each video's clips go into one file
`clips/<video key>.safetensors` (uint8, T x H x W x 3), written atomically with the plan that made them,
so an interrupted extraction resumes at the next video and a changed plan or source video re-extracts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ophora.core.errors import MediaError
from ophora.core.files import atomic_path
from ophora.core.media import iter_frames
from ophora.core.signals import die_with_parent, signals_deferred

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # the normalisation of torchvision's Kinetics-400 video models
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ClipSettings:
    frames: int
    size: int
    fps: float
    per_segment: int

    @property
    def span(self) -> float:
        """Seconds one clip covers."""
        return self.frames / self.fps


@dataclass(frozen=True)
class Clip:
    """One clip to cut: its segment's id, phase and split, and the times (s) of its frames."""

    segment: str
    phase: str
    times: tuple[float, ...]


def plan_clips(start: float, end: float, settings: ClipSettings) -> list[tuple[float, ...]]:
    """The frame times of the clips of segment [start, end) (see the module docstring)."""
    length = end - start
    count = max(1, min(settings.per_segment, math.floor(length / settings.span)))
    span = min(settings.span, length)
    clips = []
    for i in range(count):
        first = start + (i + 0.5) * length / count - span / 2
        clips.append(tuple(round(first + (j + 0.5) * span / settings.frames, 6) for j in range(settings.frames)))
    return clips


def video_key(video: str) -> str:
    """A file name for a video id (ids of generated videos hold '/'), unique by a short hash."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", video)[:80] + "-" + hashlib.sha1(video.encode()).hexdigest()[:8]


def plan_digest(clips: list[Clip], size: int, source: Path) -> str:
    """What a clip file holds: the plan, the size and the source video (its size and modification time: a video
    replaced under the same name, a resampled generated one, is cut again)."""
    stat = source.stat()
    return hashlib.sha256(json.dumps([size, [stat.st_size, stat.st_mtime_ns],
                                      [[c.segment, c.phase, c.times] for c in clips]]).encode()).hexdigest()


def clip_file_plan(path: Path) -> str:
    """The plan digest a clip file was written with ('' when it cannot be read)."""
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("plan", "")
    except Exception:  # noqa: BLE001 - a missing or damaged file has no plan
        return ""


def _scaled(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def decode_clips(path: Path, clips: list[Clip], size: int) -> tuple[list[np.ndarray | None], float]:
    """Each clip's frames (uint8, T x size x size x 3), decoding the video once; None for a clip past its end.

    A time gets the frame shown at that time. Returns the clips and the time of the last frame decoded.
    """
    targets = sorted((t, c, j) for c, clip in enumerate(clips) for j, t in enumerate(clip.times))
    out = [np.zeros((len(clip.times), size, size, 3), np.uint8) for clip in clips]
    filled = [0] * len(clips)
    k, shown, shown_t, step = 0, None, 0.0, 0.0

    def image(frame) -> np.ndarray:
        w, h = _scaled(frame.width, frame.height, size)
        array = frame.to_ndarray(format="rgb24", width=w, height=h)
        top, left = (h - size) // 2, (w - size) // 2
        return array[top:top + size, left:left + size]

    for t, frame in iter_frames(path):
        if shown is not None:
            step = t - shown_t
        if k == len(targets):
            break
        if shown is not None and t > targets[k][0]:
            picture = image(shown)
            while k < len(targets) and targets[k][0] < t:
                _, c, j = targets[k]
                out[c][j], filled[c], k = picture, filled[c] + 1, k + 1
        shown, shown_t = frame, t
    if shown is None:
        raise MediaError(f"{path} holds no decodable frames")
    last = image(shown) if k < len(targets) else None
    for t, c, j in targets[k:]:
        if t <= shown_t + max(step, 1e-3) * 1.5:  # the last frame is still shown
            out[c][j], filled[c] = last, filled[c] + 1
    return [clip if filled[c] == len(clips[c].times) else None for c, clip in enumerate(out)], shown_t


def write_clip_file(path: Path, clips: dict[str, np.ndarray], digest: str, last: float) -> None:
    """The clips of one video, named by their index in the plan, with the plan's digest and the time of the video's
    last decodable frame (clips past it are left out), atomically."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(c)) for name, c in clips.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"plan": digest, "last": repr(last)})


def cached_clips(path: Path, digest: str) -> tuple[set[str], float] | None:
    """(the clips, the last decodable time) of a clip file made with plan `digest`; None when it is absent,
    unreadable or made with another plan."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("plan") != digest:
                return None
            return set(f.keys()), float(metadata["last"])
    except Exception:  # noqa: BLE001 - a damaged or older cache file is simply made again
        return None


class ClipDataset(torch.utils.data.Dataset):
    """(uint8 clip C x T x H x W, label) for items (clip file, tensor name, label)."""

    def __init__(self, items: list[tuple[Path, str, int]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, name, label = self.items[index]
        with safe_open(str(path), "pt") as f:
            clip = f.get_tensor(name)
        return clip.permute(3, 0, 1, 2).contiguous(), label


def normalise(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 clips (B, C, T, H, W) to the Kinetics-normalised floats the video models expect (on their device)."""
    mean = torch.tensor(KINETICS_MEAN, device=batch.device, dtype=dtype).view(1, 3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD, device=batch.device, dtype=dtype).view(1, 3, 1, 1, 1)
    return (batch.to(dtype) / 255.0 - mean) / std


def epoch_order(count: int, seed: int) -> list[int]:
    """The order in which an epoch visits `count` clips, drawn from `seed` alone (the same on a resume)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()


def _worker_init(parent: int, worker: int) -> None:
    die_with_parent(parent)


@contextlib.contextmanager
def loading(loader: torch.utils.data.DataLoader) -> Iterator[Iterator]:
    """The loader's batches. Its workers are forked with SIGINT/SIGTERM held back (core/signals.py) and shut down
    when the block ends, however it ends: left to the interpreter's exit, they would outlive it (they ignore the
    SIGTERM it sends them), and a signal inside a later `__del__` could not be handled."""
    with signals_deferred():
        batches = iter(loader)
    try:
        yield batches
    finally:
        with signals_deferred():
            shutdown = getattr(batches, "_shutdown_workers", None)  # torch's, for loaders with worker processes
            if shutdown:
                shutdown()


def batches_of(indices: list[int], size: int) -> list[list[int]]:
    """`indices` cut into batches of `size` (the last may be shorter)."""
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def make_loader(dataset: ClipDataset, batches: list[list[int]], workers: int,
                pin: bool = False) -> torch.utils.data.DataLoader:
    """A loader yielding the given batches of `dataset` (lists of indices) in order; workers leave Ctrl-C to the parent."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       pin_memory=pin, prefetch_factor=4 if workers else None,
                                       worker_init_fn=functools.partial(_worker_init, os.getpid()) if workers else None)
