"""Memorisation: is a generated video a copy of a training clip?

Each generated video's nearest training clips are found by the cosine similarity of per-video descriptors
(the mean FID-Inception feature of its frames when the Inception weights are given, else its I3D logits,
else a weight-free descriptor: 32x32 grey thumbnails of 8 evenly spaced frames, each standardised). The
`candidates` nearest are then compared pixel by pixel: SSIM over aligned frames (8 frames at the same
relative times, evenly spaced over each video, grey, at most 256 pixels wide, the training clip's
frames scaled to the generated video's size). A generated video
is memorised when its best SSIM reaches `threshold`; the memorisation rate is the share of such videos.
"""

from __future__ import annotations

import cv2
import numpy as np

from ophora.evaluate.temporal import luma, ssim_pairs

PIXEL_FRAMES = 8
PIXEL_WIDTH = 256
THUMB = 32


def pixel_frames(frames: np.ndarray) -> np.ndarray:
    """(8, h, w) uint8 grey frames at evenly spaced positions (at most 256 wide), kept for the pixel check."""
    idx = np.linspace(0, len(frames) - 1, PIXEL_FRAMES).round().astype(int)
    h, w = frames.shape[1:3]
    width = min(PIXEL_WIDTH, w)  # never upscaled: smooth upscaled frames all look alike to SSIM
    size = (width, max(2, round(h * width / w / 2) * 2))
    grey = luma(frames[idx]).clip(0, 255).astype(np.uint8)
    return np.stack([cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in grey])


def thumbnail_descriptor(pixels: np.ndarray) -> np.ndarray:
    """The weight-free descriptor: thumbnails of the kept grey frames, each standardised, concatenated."""
    parts = []
    for g in pixels:
        t = cv2.resize(g, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        parts.append((t - t.mean()) / (t.std() + 1e-6))
    return np.concatenate(parts)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def nearest(generated: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (G, k) of each generated descriptor's k most cosine-similar training descriptors, and the similarities."""
    sim = _unit(generated) @ _unit(train).T
    k = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def pixel_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two videos' kept grey frames (aligned positions; `b` scaled to `a`'s size)."""
    if a.shape[1:] != b.shape[1:]:
        b = np.stack([cv2.resize(f, (a.shape[2], a.shape[1]), interpolation=cv2.INTER_AREA) for f in b])
    n = min(len(a), len(b))
    return float(ssim_pairs(a[:n], b[:n]).mean())
