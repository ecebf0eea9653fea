"""Every study video re-encoded alike, so that nothing but its pictures tells real from generated.

Real and generated files differ in container, codec, encoder tags, frame size, frame rate and length. Each
video is decoded and written again by one encoder with one setting, at one frame size and frame rate (the
generated videos' most common ones) and at most as long as the longest generated video, with no metadata
beyond what that encoder always writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ophora.core.errors import MediaError
from ophora.core.media import VideoWriter, iter_frames, probe_video


@dataclass(frozen=True)
class Target:
    width: int
    height: int
    fps: float
    seconds: float  # longest allowed duration

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": self.fps, "seconds": self.seconds}


def choose_target(generated: list[Path]) -> Target:
    """The most common size and frame rate of the generated videos, and the longest one's duration."""
    infos = [probe_video(p) for p in generated]
    (width, height), _ = Counter((i.width, i.height) for i in infos).most_common(1)[0]
    fps, _ = Counter(round(i.fps, 3) for i in infos).most_common(1)[0]
    seconds = max(i.frames / i.fps if i.fps else i.duration for i in infos)
    return Target(width - width % 2, height - height % 2, float(fps), float(seconds))


def transcode(src: Path, dst: Path, target: Target) -> int:
    """Write `src` to `dst` as H.264 MP4 at the target size and rate, cut at the target length; returns frames."""
    frames_out = max(1, int(round(target.seconds * target.fps)))
    written = 0
    with VideoWriter(dst, target.fps, target.width, target.height, crf=18, preset="medium") as writer:
        last, last_seconds = None, 0.0
        for seconds, frame in iter_frames(src, threads=1):
            image = _fit(frame.to_ndarray(format="rgb24"), target)
            # output frame k shows the latest input frame at or before k / fps (frame-rate conversion)
            while written < frames_out and written / target.fps < seconds - 1e-6:
                writer.write(image if last is None else last)
                written += 1
            last, last_seconds = image, seconds
            if written >= frames_out:
                break
        if last is None:
            raise MediaError(f"{src} holds no decodable frames")
        while written < frames_out and (written == 0 or written / target.fps <= last_seconds + 1e-6):
            writer.write(last)
            written += 1
    return written


def _fit(image: np.ndarray, target: Target) -> np.ndarray:
    """Scale to cover the target frame and crop its centre (no letterbox bars that would mark a video out)."""
    h, w = image.shape[:2]
    if (w, h) == (target.width, target.height):
        return image
    scale = max(target.width / w, target.height / h)
    nw, nh = max(target.width, round(w * scale)), max(target.height, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y = (nw - target.width) // 2, (nh - target.height) // 2
    return np.ascontiguousarray(resized[y:y + target.height, x:x + target.width])
