"""Turn a clip into a training sample: pick the frames, choose a resolution bucket, resize and crop.

Frames are taken at the target frame rate (8 fps, CogVideoX's) around the clip's middle when the clip
is long enough; a shorter clip has its frames spread evenly across its whole length (the paper's "49
frames sampled across the clip"), so every clip curate keeps (from 2 s) is usable with the defaults. The
frame count is the largest frame bucket the clip has source frames for, else the smallest bucket, whose
frames then repeat some source frames; each sample records the frame rate its frames stand for
(`effective_fps`). The resolution is the bucket whose aspect ratio is nearest the clip's (ties: the
larger one), reached by resizing to cover it and cropping the centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ophora.core.errors import InputError, MediaError
from ophora.core.models import frames_problem


@dataclass(frozen=True)
class FrameSettings:
    """How clips become fixed-size frame stacks."""

    frame_buckets: tuple[int, ...] = (49,)
    target_fps: float = 8.0
    heights: tuple[int, ...] = (480, 720)
    widths: tuple[int, ...] = (720, 960)

    def check(self) -> None:
        """Raise InputError for buckets CogVideoX cannot use."""
        for n in self.frame_buckets:
            if problem := frames_problem(n):  # a model trained at 13 frames could neither validate nor sample at its length
                raise InputError(f"frame buckets {problem}: CogVideoX decodes only 8k+1 frames")
        for side in (*self.heights, *self.widths):
            if side <= 0 or side % 16:
                raise InputError(f"bucket heights and widths must be positive multiples of 16, got {side}")
        if self.target_fps <= 0:
            raise InputError(f"target fps must be positive, got {self.target_fps}")


def choose_bucket(height: int, width: int, heights: tuple[int, ...], widths: tuple[int, ...]) -> tuple[int, int]:
    """The (height, width) bucket nearest the clip's aspect ratio in log scale; ties go to the larger area."""
    aspect = math.log(width / height)
    return min(((h, w) for h in heights for w in widths), key=lambda hw: (round(abs(math.log(hw[1] / hw[0]) - aspect), 9), -hw[0] * hw[1]))


def frame_indices(n_src: int, fps: float, settings: FrameSettings) -> list[int]:
    """Source frame indices for one sample (the module docstring says which); raises MediaError for no frames."""
    if n_src < 1:
        raise MediaError("clip has no frames")
    n = max([n for n in settings.frame_buckets if n <= n_src] or [min(settings.frame_buckets)])
    step = fps / settings.target_fps if fps > 0 else 1.0
    if step * (n - 1) + 1 <= n_src:
        start = (n_src - 1 - step * (n - 1)) / 2
        positions = start + step * np.arange(n)
    else:
        positions = np.linspace(0, n_src - 1, n)
    return [int(i) for i in np.floor(positions + 0.5)]  # round half up: Python's round-half-even would repeat frames


def effective_fps(indices: list[int], fps: float) -> float:
    """The frame rate at which the sampled frames play the clip in real time (0 when unknown)."""
    span = (indices[-1] - indices[0]) / fps if fps > 0 and len(indices) > 1 else 0.0
    return (len(indices) - 1) / span if span > 0 else 0.0


def resize_and_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB frame (H, W, 3) to cover height x width, then crop the centre."""
    import cv2

    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(frame, (rw, rh), interpolation=interp)
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[top:top + height, left:left + width]


def decode_frames(path, settings: FrameSettings) -> tuple[np.ndarray, dict]:
    """Decode a clip into uint8 RGB frames (F, H, W, 3) of one bucket, plus what was done to it."""
    import av  # here, so resizing and VAE input work where PyAV is not installed (benchmarks on a bare GPU machine)

    from ophora.core.media import stream_fps

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = stream_fps(stream)
            src_h, src_w = stream.height, stream.width
            height, width = choose_bucket(src_h, src_w, settings.heights, settings.widths)
            frames = [resize_and_crop(f.to_ndarray(format="rgb24"), height, width) for f in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from None
    if not frames:
        raise MediaError(f"{path} holds no decodable frames")
    indices = frame_indices(len(frames), fps, settings)
    info = {"source_frames": len(frames), "source_fps": fps, "source_size": [src_h, src_w], "frame_indices": indices,
            "effective_fps": effective_fps(indices, fps)}
    return np.stack([frames[i] for i in indices]), info


def to_vae_input(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (F, H, W, 3), or a batch (N, F, H, W, 3), -> float (N, 3, F, H, W) in [-1, 1] on `device`, the layout
    CogVideoX's VAE encodes. The uint8 frames are moved first and converted there (a quarter of the bytes to copy)."""
    video = torch.from_numpy(frames).to(device)
    video = video[None] if video.dim() == 4 else video
    return video.float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3).contiguous()
