"""Video reading and writing with PyAV: H.264/yuv420p output that plays in browsers, atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ophora.core.errors import MediaError
from ophora.core.files import atomic_path


class NoVideoStreamError(MediaError):
    """The file opens but holds no video stream (an audio file, a subtitle file)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream."""

    width: int
    height: int
    fps: float
    frames: int
    duration: float
    codec: str


def write_video(path: str | Path, frames: np.ndarray, fps: float, qp: int = 18) -> Path:
    """Encode uint8 RGB frames (F, H, W, 3) to H.264 yuv420p MP4, written atomically.

    Constant quantizer `qp` (lower is better) rather than CRF: x264's rate control with SIMD enabled
    makes identical inputs encode differently from call to call, and we want reproducible files.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"write_video wants uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise MediaError(f"no frames to write to {path}")
    if h % 2 or w % 2:
        raise MediaError(f"H.264 yuv420p needs even width and height, got {w}x{h} for {path}")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4",
                                          options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qp": str(qp), "preset": "medium"}
        for i, frame in enumerate(frames):
            planes = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p").to_ndarray()
            yuv = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            yuv.pts = i
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())
    return path


def stream_fps(stream, default: float = 0.0) -> float:
    """A video stream's frame rate: its average rate, else the rate FFmpeg guesses, else `default`."""
    return float(stream.average_rate or stream.guessed_rate or default)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8, rounding to nearest."""
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _open(path: Path):
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot open video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise NoVideoStreamError(f"{path} has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and duration of the first video stream."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = stream_fps(stream)
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
        fps = stream_fps(stream)
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode {path}: {exc}") from None
    if not frames:
        raise MediaError(f"{path} holds no decodable frames")
    return np.stack(frames), fps


class VideoWriter:
    """Stream RGB frames into an H.264 yuv420p MP4 one at a time; the file appears atomically on close."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 18,
                 preset: str = "medium", keyint: int | None = None):
        if width % 2 or height % 2:
            raise MediaError(f"H.264 yuv420p needs even width and height, got {width}x{height} for {path}")
        self.path = Path(path)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if keyint:
            options["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
        self._stream.options = options
        self._count = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3)."""
        yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuv420p")
        yuv.pts = self._count
        self._container.mux(self._stream.encode(yuv))
        self._count += 1

    def close(self) -> Path:
        """Flush, close and move the file into place."""
        self._container.mux(self._stream.encode())
        self._container.close()
        if not self._count:
            self._atomic.__exit__(MediaError, None, None)
            raise MediaError(f"no frames to write to {self.path}")
        self._atomic.__exit__(None, None, None)
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()
            self._atomic.__exit__(exc_type, exc, tb)


def video_rotation(path: str | Path) -> int:
    """Display rotation of the first video stream in degrees (0, 90, 180, 270), from its first frame."""
    path = Path(path)
    with _open(path) as container:
        try:
            frame = next(container.decode(container.streams.video[0]))
        except (StopIteration, av.error.FFmpegError):
            return 0
        return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def iter_frames(path: str | Path, threads: int = 0, reference_only: bool = False):
    """Decode the first video stream, yielding `(seconds, av.VideoFrame)` in display order.

    Timestamps come from each frame (variable frame rate is fine); `threads=0` lets FFmpeg choose.
    `reference_only` skips frames no other frame refers to (typically B-frames): about half the frames
    of common H.264, at a fraction of the decoding cost.
    """
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        if reference_only:
            stream.codec_context.skip_frame = "NONREF"
        base = stream.start_time if stream.start_time is not None else 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                yield float((frame.pts - base) * stream.time_base), frame
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode {path}: {exc}") from None


def copy_segment(src: str | Path, dst: str | Path, start: float, end: float) -> tuple[float, float]:
    """Copy the video packets of [start, end) without re-encoding, written atomically.

    The copy begins at the first keyframe at or after `start` and stops at the first packet (decode
    order) shown at or after `end`, so every copied frame decodes. Returns the span actually copied.
    """
    src, dst = Path(src), Path(dst)
    first = last = None
    with atomic_path(dst) as tmp:
        with _open(src) as container, av.open(str(tmp), mode="w", format="mp4",
                                              options={"movflags": "+faststart"}) as out:
            stream = container.streams.video[0]
            out_stream = out.add_stream_from_template(stream)
            tb = stream.time_base
            base = stream.start_time if stream.start_time is not None else 0
            container.seek(max(int((start - 1.0) / tb) + base, base), stream=stream, backward=True)
            offset = None
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                t = float((packet.pts - base) * tb)
                if offset is None:
                    if not packet.is_keyframe or t < start - 1e-3:
                        continue
                    offset, first = packet.pts, t
                if t >= end - 1e-3:
                    break
                last = t if last is None else max(last, t)
                packet.pts -= offset
                packet.dts = packet.dts - offset if packet.dts is not None else None
                packet.stream = out_stream
                out.mux(packet)
        if first is None or last is None:
            raise MediaError(f"no keyframe in [{start:.2f}, {end:.2f}) s of {src}")
    fps = probe_video(dst).fps or 30.0
    return first, last + 1.0 / fps


def encode_segment(src: str | Path, dst: str | Path, start: float, end: float, crf: int = 18,
                   rotation: int = 0, preset: str = "veryfast") -> tuple[float, float]:
    """Re-encode the frames shown in [start, end) to H.264 (exact boundaries, display rotation applied)."""
    src = Path(src)
    first = last = None
    writer = None
    try:
        with _open(src) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = stream_fps(stream, 30.0)
            base = stream.start_time if stream.start_time is not None else 0
            container.seek(max(int(start / stream.time_base) + base, base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float((frame.pts - base) * stream.time_base)
                if t < start - 1e-3:
                    continue
                if t >= end - 1e-3:
                    break
                image = frame.to_ndarray(format="rgb24")
                image = np.rot90(image, k=rotation // 90) if rotation else image
                image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
                if writer is None:
                    writer = VideoWriter(dst, fps, image.shape[1], image.shape[0], crf=crf, preset=preset)
                writer.write(image)
                first = t if first is None else first
                last = t
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, None)
        if isinstance(exc, av.error.FFmpegError):
            raise MediaError(f"cannot decode {src}: {exc}") from None
        raise
    if writer is None or first is None:
        raise MediaError(f"no frames in [{start:.2f}, {end:.2f}) s of {src}")
    writer.close()
    return first, last + 1.0 / fps
