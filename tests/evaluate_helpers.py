"""Shared pieces of the evaluate tests: tiny synthetic videos and random networks in the published file layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from ophora.core.media import write_video


def texture_video(seed: int, frames: int = 20, size: tuple[int, int] = (64, 64), speed: int = 2,
                  brightness: float = 0.0) -> np.ndarray:
    """A smooth random texture panning across the frame: uint8 (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    h, w = size
    big = rng.uniform(0, 255, (h + 2 * frames * speed, w + 2 * frames * speed, 3)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 1.5)
    big = (big - big.mean()) * 4 + 128 + brightness
    out = np.stack([big[i * speed:i * speed + h, i * speed:i * speed + w] for i in range(frames)])
    return np.clip(out, 0, 255).astype(np.uint8)


def write_set(folder: Path, seeds, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"v{s}.mp4", texture_video(s, **kw), fps=8) for s in seeds]


def write_sample_output(folder: Path, items: list[tuple[str, str, int]], **kw) -> Path:
    """`ophora sample`'s layout: <clip id>/<n>.mp4 and manifest.csv; items are (clip id, prompt, seed)."""
    rows = []
    for clip_id, prompt, seed in items:
        write_video(folder / clip_id / "0.mp4", texture_video(seed, **kw), fps=8)
        rows.append({"clip id": clip_id, "n": 0, "prompt": prompt, "path": f"{clip_id}/0.mp4"})
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["clip id", "n", "prompt", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from ophora.evaluate.random_weights import write_random_clip, write_random_i3d, write_random_inception

    folder = tmp_path_factory.mktemp("weights")
    return {"inception": write_random_inception(folder / "pt_inception-2015-12-05-6726825d.pth"),
            "i3d": write_random_i3d(folder / "i3d_pretrained_400.pt"),
            "clip": write_random_clip(folder / "clip")}
