"""Video reading and writing with PyAV: H.264/yuv420p output that plays in browsers, atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import logging

import av
from av.video.frame import PictureType
import numpy as np

from ophora.core.errors import MediaError
from ophora.core.files import atomic_path
from ophora.core.smart_cut import SmartCutUnavailable, smart_cut, smart_cut_config, span_pts

log = logging.getLogger(__name__)


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


def video_stream(container):
    """The stream a video is: the largest picture that is not a cover image, then the most frames.

    A file may hold a small preview or a thumbnail track beside the real video, in any order.
    """
    def rank(stream):
        attached = bool(stream.disposition & av.stream.Disposition.attached_pic)
        return (not attached, (stream.width or 0) * (stream.height or 0), stream.frames or 0, -stream.index)

    return max(container.streams.video, key=rank)


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and duration of the video stream (`video_stream`)."""
    path = Path(path)
    with _open(path) as container:
        stream = video_stream(container)
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
        stream = video_stream(container)
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
        self._rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=self._rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        options = {"crf": str(crf), "preset": preset, "threads": "1"}
        if keyint:
            options["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
        self._stream.options = options
        self._count = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3)."""
        self.write_frame(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))

    def write_frame(self, frame: av.VideoFrame) -> None:
        """Append one decoded frame of any pixel format, scaled to the writer's size (area averaging)."""
        yuv = frame.reformat(width=self._stream.width, height=self._stream.height, format="yuv420p",
                             interpolation="AREA", dst_color_range="MPEG")  # limited range, as the stream says
        yuv.pts, yuv.time_base, yuv.pict_type = self._count, 1 / self._rate, PictureType.NONE
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
    """Display rotation of the video stream in degrees (0, 90, 180, 270), from its first frame."""
    path = Path(path)
    with _open(path) as container:
        try:
            frame = next(container.decode(video_stream(container)))
        except (StopIteration, av.error.FFmpegError):
            return 0
        return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def iter_frames(path: str | Path, threads: int = 0, reference_only: bool = False):
    """Decode the video stream, yielding `(seconds, av.VideoFrame)` in display order.

    Timestamps come from each frame (variable frame rate is fine); `threads=0` lets FFmpeg choose.
    `reference_only` skips frames no other frame refers to (typically B-frames): about half the frames
    of common H.264, at a fraction of the decoding cost. A file that stops decoding part-way (truncated,
    damaged) yields the frames before the damage; one that yields none raises MediaError.
    """
    path = Path(path)
    with _open(path) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        if reference_only:
            stream.codec_context.skip_frame = "NONREF"
        base = stream.start_time if stream.start_time is not None else 0
        decoded = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                decoded += 1
                yield float((frame.pts - base) * stream.time_base), frame
        except av.error.FFmpegError as exc:
            if not decoded:
                raise MediaError(f"cannot decode {path}: {exc}") from None
            log.warning("%s: decoding stopped after %d frames (%s); using the part before", path, decoded, exc)


def is_browser_h264(stream) -> bool:
    """Whether packets of `stream` can go into an .mp4 unchanged: H.264, yuv420p 8-bit, avcC parameter sets."""
    return smart_cut_config(stream) is not None


def copy_segment(src: str | Path, dst: str | Path, start: float, end: float) -> tuple[float, float]:
    """Copy the video packets of [start, end) without re-encoding, written atomically.

    The copy begins at the first keyframe at or after `start` and stops at the first packet (decode
    order) shown at or after `end`, so every copied frame decodes. Returns the span actually copied.
    Raises SmartCutUnavailable for a source whose packets would not play in an .mp4 (re-encode it).
    """
    src, dst = Path(src), Path(dst)
    first = last = None
    with _open(src) as container:
        stream = video_stream(container)
        if not is_browser_h264(stream):
            raise SmartCutUnavailable(f"{src} is not H.264 yuv420p 8-bit")
        with atomic_path(dst) as tmp:
            with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
                out_stream = out.add_stream_from_template(stream)
                tb = stream.time_base
                base = stream.start_time if stream.start_time is not None else 0
                container.seek(max(int((start - 1.0) / tb) + base, base), stream=stream, backward=True)
                offset = None
                for packet in _demux(container, stream):
                    if packet is None:
                        break
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


def _demux(container, stream):
    """The stream's packets with timestamps, in decode order, up to the first damaged one (a truncated file),
    after which None is yielded."""
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                log.warning("%s: damaged packet at %s; using the part before", container.name, packet.pts)
                yield None
                return
            if packet.pts is not None and packet.size:
                yield packet
    except av.error.FFmpegError as exc:
        log.warning("%s: reading stopped (%s); using the part before", container.name, exc)
        yield None


def _packets_until(container, stream, end_pts: int, end: float) -> tuple[list, float]:
    """Packets in decode order from the current position until every frame shown before `end_pts` is read.

    A file that ends early (truncated) gives the packets it has, and an `end` lowered to the first frame
    time that may be missing (frames shown before the first missing packet's decode time are all present).
    """
    packets, beyond, damaged = [], 0, False
    for packet in _demux(container, stream):
        if packet is None:
            damaged = True
            break
        packets.append(packet)
        beyond += (packet.dts if packet.dts is not None else packet.pts) >= end_pts
        if beyond > 16:  # past `end` in decode order by more than any reordering delay
            break
    if damaged and packets:
        base = stream.start_time if stream.start_time is not None else 0
        last = packets[-1].dts if packets[-1].dts is not None else packets[-1].pts
        end = min(end, float((last + 1 - base) * stream.time_base))
    return packets, end


def cut_segment(src: str | Path, dst: str | Path, start: float, end: float, crf: int = 18,
                preset: str = "veryfast") -> tuple[float, float]:
    """The frames shown in [start, end) as an H.264 yuv420p MP4, written atomically; returns their span.

    A smart cut (core/smart_cut.py: the frames before the first keyframe and after the last whole group of
    pictures are re-encoded, the rest copied) where the source allows it, else a re-encode of every frame.
    """
    result = cut_segments(src, [(Path(dst), start, end)], crf, preset)[0]
    if isinstance(result, Exception):
        raise result
    return result


def cut_segments(src: str | Path, clips: list[tuple[Path, float, float]], crf: int = 18,
                 preset: str = "veryfast") -> list[tuple[float, float] | MediaError | OSError]:
    """`cut_segment` for each (target, start, end) of `clips`, with the source opened once and taken in time
    order: a group of pictures holding one clip's end and the next one's start (adjacent narrated spans) is
    decoded once. A clip that cannot be written gives its error in its place; the others are still written."""
    src = Path(src)
    results: list = [None] * len(clips)
    order = sorted(range(len(clips)), key=lambda i: clips[i][1])
    carry = None
    with _open(src) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        smart = smart_cut_config(stream) is not None
        for n, i in enumerate(order):
            dst, start, end = clips[i]
            following = clips[order[n + 1]][1:] if n + 1 < len(order) else None
            try:
                try:
                    if not smart:
                        raise SmartCutUnavailable(f"{src} is not H.264 yuv420p 8-bit with avcC parameter sets")
                    results[i], carry = _smart_clip(container, stream, src, Path(dst), start, end, following, carry,
                                                    crf, preset)
                    continue
                except SmartCutUnavailable as exc:
                    log.debug("%s: re-encoding [%.2f, %.2f) (%s)", src, start, end, exc)
                except av.error.FFmpegError as exc:
                    raise MediaError(f"cannot cut {src}: {exc}") from None
                carry = None
                results[i] = encode_segment(src, dst, start, end, crf=crf, preset=preset)
            except (MediaError, OSError) as exc:
                carry, results[i] = None, exc
            except av.error.FFmpegError as exc:  # the re-encode's encoder: this clip only
                carry, results[i] = None, MediaError(f"cannot re-encode [{start:.2f}, {end:.2f}) s of {src}: {exc}")
    return results


def _smart_clip(container, stream, src: Path, dst: Path, start: float, end: float,
                following: tuple[float, float] | None, carry, crf: int, preset: str):
    """One smart cut from the open source; returns its span and the next clip's head frames, if decoded."""
    tb = stream.time_base
    base = stream.start_time if stream.start_time is not None else 0
    container.seek(max(int(start / tb) + base, base), stream=stream, backward=True)
    packets, end = _packets_until(container, stream, base + int(round(end / tb)), end)
    if not packets or packets[0].pts > base + int(round((start + 1e-3) / tb)):
        raise SmartCutUnavailable("the seek landed after the clip start")
    ahead = None
    if following:
        next_pts, next_end_pts = span_pts(*following, tb, base)  # as the next clip's own cut counts them
        if any(p.is_keyframe and p.pts > next_pts for p in packets):
            ahead = []  # the next clip's first keyframe was read already
        else:
            ahead = _packets_to_keyframe(container, stream, next_pts, next_end_pts)
    with atomic_path(dst) as tmp, av.open(str(tmp), mode="w", format="mp4",
                                          options={"movflags": "+faststart"}) as out:
        first, after, carry = smart_cut(src, out, stream, packets, start, end, crf, preset, carry,
                                        following[0] if ahead is not None else None, ahead or [])
    return (float(first * tb), float(after * tb)), carry


def _packets_to_keyframe(container, stream, after_pts: int, limit_pts: int) -> list | None:
    """The next packets, up to the first keyframe shown after `after_pts` (the next clip's start).

    None when a keyframe at or before `after_pts` comes first (the next clip decodes from that one), none
    comes before `limit_pts`, or the file is damaged first: at most one group of pictures is read ahead."""
    more = []
    for packet in _demux(container, stream):
        if packet is None or packet.pts >= limit_pts or (packet.is_keyframe and packet.pts <= after_pts):
            return None
        more.append(packet)
        if packet.is_keyframe:
            return more
    return None


def encode_segment(src: str | Path, dst: str | Path, start: float, end: float, crf: int = 18,
                   rotation: int = 0, preset: str = "veryfast", max_height: int = 0) -> tuple[float, float]:
    """Re-encode the frames shown in [start, end) to H.264 yuv420p (exact boundaries, display rotation applied).

    `max_height` > 0 scales larger frames down to that height (after rotation), keeping the aspect ratio.
    """
    src = Path(src)
    first = last = None
    writer = None
    try:
        with _open(src) as container:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            fps = stream_fps(stream, 30.0)
            base = stream.start_time if stream.start_time is not None else 0
            container.seek(max(int(start / stream.time_base) + base, base), stream=stream, backward=True)
            for frame in _decode(container, stream):
                t = float((frame.pts - base) * stream.time_base)
                if t < start - 1e-3:
                    continue
                if t >= end - 1e-3:
                    break
                if writer is None:
                    w, h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
                    scale = min(1.0, max_height / h) if max_height else 1.0
                    size = (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2))
                    writer = VideoWriter(dst, fps, *size, crf=crf, preset=preset)
                if rotation:
                    image = np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)
                    writer.write(np.ascontiguousarray(image[: size[1], : size[0]]) if scale == 1.0 else
                                 _resize(image, size))
                else:
                    writer.write_frame(frame)
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


def _decode(container, stream):
    """Decoded frames with timestamps in display order, up to the first damaged packet."""
    try:
        for frame in container.decode(stream):
            if frame.pts is not None:
                yield frame
    except av.error.FFmpegError as exc:
        log.warning("%s: decoding stopped (%s); using the part before", container.name, exc)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
