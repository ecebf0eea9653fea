"""One decode pass over a source video, then per-clip scores: resolution, scene cuts, motion, non-surgical frames.

The pass decodes the source once (by default only its reference frames) and keeps only what the scores
need: a tiny colour frame per decoded frame for PySceneDetect (never stored), grey frames sampled at
`grey_fps` for motion, overlay and frame-type statistics, and colour frames once per `ocr_interval`
inside candidate clips for the text detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scenedetect.common import FrameTimecode
from scenedetect.detectors import ContentDetector, ThresholdDetector

from ophora.curate.segment import Span
from ophora.core.config import option
from ophora.core.errors import ConfigError, MediaError
from ophora.core.media import iter_frames
from ophora.core.privacy import band_strip

SCENE_SIZE = (128, 72)


@dataclass
class FilterConfig:
    """Thresholds of every filter; scores are kept in the manifest whatever the decision."""

    min_width: int = option(720, "narrower sources are dropped (reason: resolution)")
    min_height: int = option(480, "lower sources are dropped (reason: resolution)")
    scene_threshold: float = 27.0
    fade_threshold: float = 12.0
    # Analyse only reference frames (~half of common H.264, much cheaper to decode); a cut is then known to
    # lie between two analysed frames, and the frames between them are left out of both sides.
    reference_frames_only: bool = True
    grey_fps: float = 4.0
    grey_width: int = 256
    freeze_eps: float = 0.3
    max_frozen_fraction: float = 0.5
    max_motion: float = 40.0
    max_non_surgical_fraction: float = 0.3
    ocr_interval: float = 1.0

    def check(self) -> None:
        for name in ("min_width", "min_height"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        for name in ("grey_fps", "grey_width", "ocr_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"filter setting {name} must be positive, got {getattr(self, name)}")


@dataclass
class SourceScan:
    """What one decode pass learned about a source video (times in seconds, frames already rotated)."""

    width: int
    height: int
    fps: float = 0.0
    keyframes: list[float] = field(default_factory=list)
    cuts: list[tuple[float, float]] = field(default_factory=list)  # (last frame seen before, first after)
    grey_times: list[float] = field(default_factory=list)
    greys: list[np.ndarray] = field(default_factory=list)
    ocr_times: list[float] = field(default_factory=list)
    ocr_frames: list[bytes] = field(default_factory=list)  # JPEG: an hour of narration stays ~150 MB
    ocr_strips: list[bytes] = field(default_factory=list)  # JPEG: their top and bottom bands at source resolution
    last_time: float = 0.0

    @property
    def end_time(self) -> float:
        """Where the decodable video ends (a truncated file ends before its header says)."""
        return self.last_time + (1.0 / self.fps if self.fps else 0.0)

    def grey_stack(self, start: float, end: float) -> np.ndarray:
        """Grey frames (N, H, W) shown in [start, end)."""
        picked = [f for t, f in zip(self.grey_times, self.greys) if start <= t < end]
        return np.stack(picked) if picked else np.zeros((0, 1, 1), np.uint8)

    def ocr_stack(self, start: float, end: float, count: int, strips: bool = False) -> list[np.ndarray]:
        """Up to `count` OCR frames (or their band strips) from [start, end), spread evenly."""
        images = self.ocr_strips if strips else self.ocr_frames
        inside = [f for t, f in zip(self.ocr_times, images) if start <= t < end]
        if len(inside) > count:
            inside = [inside[i] for i in np.linspace(0, len(inside) - 1, count).round().astype(int)]
        return [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in inside]


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    return np.rot90(image, k=rotation // 90).copy() if rotation else image


def _size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _small(frame, size: tuple[int, int], pixel_format: str) -> np.ndarray:
    """`frame` scaled to `size` as a numpy image."""
    # Area averaging: a fraction of the default (bicubic) scaler's cost at these ratios, without aliasing.
    return frame.reformat(width=size[0], height=size[1], format=pixel_format, interpolation="AREA").to_ndarray()


def scan_source(path: Path, spans: list[Span], config: FilterConfig, rotation: int = 0,
                ocr_long_side: int = 640, band: float = 0.0, band_long_side: int = 1536) -> SourceScan:
    """Decode `path` once and collect keyframes, scene cuts, grey frames and OCR frames (inside `spans`); with
    `band` > 0 also each OCR frame's top and bottom bands at source resolution (at most `band_long_side` wide)."""
    detectors = [ContentDetector(threshold=config.scene_threshold, min_scene_len=2),
                 ThresholdDetector(threshold=config.fade_threshold, min_scene_len=2)]
    scan: SourceScan | None = None
    times: list[float] = []
    bounds = sorted((s.start, s.end) for s in spans)
    current = 0  # the first span not yet over
    next_grey = next_ocr = 0.0
    grey_size = ocr_size = strip_size = (0, 0)
    for t, frame in iter_frames(path, reference_only=config.reference_frames_only):
        if scan is None:
            w, h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
            scan = SourceScan(width=w, height=h)
            grey_size = _size(frame.width, frame.height, config.grey_width)
            ocr_size = _size(frame.width, frame.height, ocr_long_side)
            strip_size = _size(frame.width, frame.height, band_long_side)
        if frame.key_frame:
            scan.keyframes.append(t)
        # One scaler pass per frame (reading a full-size frame is the cost); smaller views come from it.
        small = _small(frame, grey_size, "bgr24")
        tiny = cv2.resize(small, SCENE_SIZE, interpolation=cv2.INTER_AREA)
        # PySceneDetect counts frames; its cut frame numbers map back to real (possibly VFR) times.
        code = FrameTimecode(len(times), fps=30.0)
        times.append(t)
        for detector in detectors:
            scan.cuts.extend((times[c.frame_num - 1], times[c.frame_num])
                             for c in detector.process_frame(code, tiny) if c.frame_num > 0)
        while current < len(bounds) and bounds[current][1] <= t:
            current += 1
        if current == len(bounds) or t < bounds[current][0]:
            continue  # between clips: only scene detection needs this frame
        if t >= next_grey:
            grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            scan.grey_times.append(t)
            scan.greys.append(_rotate(grey, rotation))
            next_grey = t + 1.0 / config.grey_fps
        if t >= next_ocr:
            bgr = _rotate(_small(frame, ocr_size, "bgr24"), rotation)
            scan.ocr_times.append(t)
            scan.ocr_frames.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
            if band > 0:
                strip = band_strip(_rotate(_small(frame, strip_size, "bgr24"), rotation), band)
                # quality 97: at 90 the JPEG blurs small dark text on the dark drape away (about 1.3x the bytes
                # of the 640-px frame at 90)
                scan.ocr_strips.append(cv2.imencode(".jpg", strip, [cv2.IMWRITE_JPEG_QUALITY, 97])[1].tobytes())
            # on a regular grid, not from this frame's time: text shown for one interval is sampled
            next_ocr += config.ocr_interval
            if next_ocr <= t:
                next_ocr = t + config.ocr_interval
    if scan is None:
        raise MediaError(f"{path} holds no decodable frames")
    scan.last_time = times[-1]
    scan.cuts = sorted(set(scan.cuts))
    return scan


def resolution_ok(width: int, height: int, config: FilterConfig) -> bool:
    """Whether a frame of this size meets the minimum (orientation-independent: 480x720 passes 720x480)."""
    return max(width, height) >= max(config.min_width, config.min_height) and \
        min(width, height) >= min(config.min_width, config.min_height)


def longest_cut_free(start: float, end: float, cuts: list[tuple[float, float]],
                     frame_s: float) -> tuple[float, float, int]:
    """The longest part of [start, end) holding no frame at or after a cut's `before` and before its `after`.

    Returns the part and how many cuts fell inside; `frame_s` is one frame's duration.
    """
    inside = [(b, a) for b, a in cuts if start < a < end]
    bounds = [start] + [x for b, a in inside for x in (b + 0.5 * frame_s, a)] + [end]
    pieces = list(zip(bounds[::2], bounds[1::2]))
    a, b = max(pieces, key=lambda ab: ab[1] - ab[0])
    return a, b, len(inside)


def snap_to_keyframe(start: float, keyframes: list[float]) -> float | None:
    """The first keyframe at or after `start` (stream copy can only begin there)."""
    return next((k for k in keyframes if k >= start - 1e-3), None)


def frame_kind(grey: np.ndarray) -> str:
    """`black`, `blank` (one flat colour: slides, title cards, empty screens) or `scene`."""
    mean = float(grey.mean())
    if mean < 20:
        return "black"
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    dark = hist[:24].sum() / hist.sum()
    window = np.convolve(hist[24:], np.ones(9), mode="same")
    flat = window.max() / hist.sum()
    if flat > 0.5 or dark > 0.9:
        return "blank"
    return "scene"


def motion_scores(greys: np.ndarray, config: FilterConfig) -> dict[str, float]:
    """Mean absolute grey difference between successive grey frames, and the fraction that barely changes."""
    if len(greys) < 2:
        return {"motion": 0.0, "frozen_fraction": 1.0}
    diffs = np.abs(np.diff(greys.astype(np.int16), axis=0)).mean(axis=(1, 2))
    return {"motion": float(diffs.mean()), "frozen_fraction": float((diffs < config.freeze_eps).mean())}


def non_surgical_scores(greys: np.ndarray) -> dict[str, float]:
    """Fractions of grey frames that are black or blank (slides, title cards)."""
    kinds = [frame_kind(s) for s in greys]
    n = max(len(kinds), 1)
    return {"black_fraction": kinds.count("black") / n, "blank_fraction": kinds.count("blank") / n}


def content_decision(scores: dict[str, float], config: FilterConfig) -> str | None:
    """The reason a clip's content fails the filters, or None when it passes."""
    if scores["black_fraction"] + scores["blank_fraction"] > config.max_non_surgical_fraction:
        return "black" if scores["black_fraction"] >= scores["blank_fraction"] else "blank_or_slide"
    if scores["frozen_fraction"] > config.max_frozen_fraction:
        return "static"
    if scores["motion"] > config.max_motion:
        return "extreme_motion"
    return None
