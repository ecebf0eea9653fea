"""Video reading and writing with PyAV: H.264/yuv420p output that plays in browsers, atomic writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ophora.errors import MediaError


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream."""

    width: int
    height: int
    fps: float
    frames: int
    duration: float
    codec: str


def temp_path(path: Path) -> Path:
    """A sibling name for writing `path` atomically; it never ends in the final suffix alone."""
    return path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (F, H, W, 3) to H.264 yuv420p MP4, written atomically."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"write_video wants uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise MediaError(f"no frames to write to {path}")
    if h % 2 or w % 2:
        raise MediaError(f"H.264 yuv420p needs even width and height, got {w}x{h} for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _open(path: Path):
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot open video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path} has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and duration of the first video stream."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = stream.frames or int(round(duration * fps))
        return VideoInfo(stream.width, stream.height, fps, frames, duration, stream.codec_context.name)


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame to uint8 RGB (F, H, W, 3); returns the frames and the stream's fps."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode {path}: {exc}") from None
    if not frames:
        raise MediaError(f"{path} holds no decodable frames")
    return np.stack(frames), fps
