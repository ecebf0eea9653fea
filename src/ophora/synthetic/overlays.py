"""Burned-in overlays of synthetic surgery videos: a caption line and a corner watermark.

Both are drawn in place on a frame and have a pure-geometry box function, so a video's ground truth can
name the pixels an overlay touches before anything is drawn. Sizes follow the frame's width (as in an
854x480 upload) but never fall below a legible floor, so a caption stays readable at 192x128.

Two looks each. The plain ones (a thin outlined caption, a text-free ring logo: `narrated_videos`) are what
the privacy tests were written against. The boxed ones of the surgery world are what many uploads burn in:
a bold caption on a dark backing box and a channel bug (the logo and a channel name on a dark plate); their
coarse, high-contrast shapes survive the small autoencoder of the mini experiment, which blurs thin strokes
away (benchmarks/leakage_control.py measures that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_CAPTION_SCALE = 0.4  # Hershey scale 0.4: capitals about 9 pixels high
CORNERS = ("top_right", "top_left")
Box = tuple[int, int, int, int]  # x0, y0, x1, y1: the pixels [x0, x1) x [y0, y1)


@dataclass(frozen=True)
class CaptionStyle:
    """How a caption line is drawn: outlined thin letters, or bold letters on a dark backing box."""

    bold: bool = False  # stroke thickness 2 at every scale (else 2 only from scale 0.6 up)
    backing: float = 0.0  # opacity of a black box behind the line; 0: a black outline around the letters instead


OUTLINED = CaptionStyle()
BOXED = CaptionStyle(bold=True, backing=0.8)


def _caption_layout(width: int, height: int, text: str,
                    style: CaptionStyle) -> tuple[float, int, int, tuple[int, int]]:
    """Scale, letter thickness, outline thickness (0: none) and the text origin of a bottom-centred caption."""
    scale = max(width / 900, MIN_CAPTION_SCALE)
    thickness = 2 if style.bold or scale >= 0.6 else 1
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return scale, thickness, 0 if style.backing else 3 * thickness, ((width - tw) // 2, height - int(0.08 * height))


def _caption_extent(width: int, height: int, text: str, style: CaptionStyle) -> Box:
    """The pixels `draw_caption` may change (backing box, outline and anti-aliasing included), not clipped to the frame."""
    scale, thickness, outline, (x, y) = _caption_layout(width, height, text, style)
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, max(outline, thickness))  # the outline reaches furthest
    pad = max(2, round(0.3 * th)) if style.backing else outline // 2 + 2
    return x - pad, y - th - pad, x + tw + pad, y + baseline + pad


def _clip(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def caption_box(width: int, height: int, text: str, style: CaptionStyle = OUTLINED) -> Box:
    """The pixels `draw_caption` may change, clipped to the frame."""
    return _clip(_caption_extent(width, height, text, style), width, height)


def caption_fits(width: int, height: int, text: str, style: CaptionStyle = OUTLINED) -> bool:
    """Whether the whole caption (its backing box, if any) lies inside a frame of this size."""
    return caption_box(width, height, text, style) == _caption_extent(width, height, text, style)


def _darken(frame: np.ndarray, box: Box, opacity: float) -> None:
    """Blend black over `box` of `frame` (in place) at `opacity`."""
    x0, y0, x1, y1 = _clip(box, frame.shape[1], frame.shape[0])
    frame[y0:y1, x0:x1] = (frame[y0:y1, x0:x1] * (1 - opacity)).round().astype(frame.dtype)


def draw_caption(frame: np.ndarray, text: str, style: CaptionStyle = OUTLINED) -> Box:
    """A white caption line at the bottom centre of `frame` (in place), black-outlined or on a dark backing box
    (`style`); returns its box."""
    h, w = frame.shape[:2]
    scale, thickness, outline, org = _caption_layout(w, h, text, style)
    if style.backing:
        _darken(frame, _caption_extent(w, h, text, style), style.backing)
    else:
        cv2.putText(frame, text, org, FONT, scale, (0, 0, 0), outline, cv2.LINE_AA)
    cv2.putText(frame, text, org, FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return caption_box(w, h, text, style)


def _watermark_layout(width: int, height: int, corner: str) -> tuple[tuple[int, int], int, int]:
    """Centre, radius and ring thickness of the logo in `corner`."""
    if corner not in CORNERS:
        raise ValueError(f"watermark corner must be one of {', '.join(CORNERS)}, got {corner!r}")
    r = max(int(0.05 * height), 9)
    x = width - int(0.08 * width) if corner == "top_right" else int(0.08 * width)
    return (max(min(x, width - r - 3), r + 3), max(int(0.1 * height), r + 3)), r, 3 if r >= 20 else 2


def _bug_layout(width: int, height: int, corner: str, name: str) -> tuple[Box, tuple[int, int], int, float,
                                                                        tuple[int, int]]:
    """A channel bug's plate, logo centre and radius, name scale and origin: logo and name side by side on a
    plate in `corner`, narrower than a third of the frame (a compact logo, as the static-overlay check expects)."""
    if corner not in CORNERS:
        raise ValueError(f"watermark corner must be one of {', '.join(CORNERS)}, got {corner!r}")
    scale = max(width / 900, MIN_CAPTION_SCALE)
    (tw, th), _ = cv2.getTextSize(name, FONT, scale, 2)
    r, pad, margin = max(round(0.65 * th), 7), max(2, round(0.2 * th)), max(3, int(0.03 * width))
    w, h = 3 * pad + 2 * r + tw, 2 * (pad + r)
    x0 = width - margin - w if corner == "top_right" else margin
    plate = (x0, margin, x0 + w, margin + h)
    return plate, (x0 + pad + r, margin + pad + r), r, scale, (x0 + 2 * pad + 2 * r, margin + pad + r + th // 2)


def watermark_box(width: int, height: int, corner: str = "top_right", name: str = "") -> Box:
    """The pixels `draw_watermark` may change, clipped to the frame."""
    if name:  # the plate, and a pixel more: the ring's anti-aliased edge
        x0, y0, x1, y1 = _bug_layout(width, height, corner, name)[0]
        return _clip((x0 - 1, y0 - 1, x1 + 1, y1 + 1), width, height)
    (cx, cy), r, ring = _watermark_layout(width, height, corner)
    pad = r + ring // 2 + 2
    return (max(cx - pad, 0), max(cy - pad, 0), min(cx + pad + 1, width), min(cy + pad + 1, height))


def _logo(frame: np.ndarray, c: tuple[int, int], r: int, ring: int, line: int) -> None:
    """A white ring with a five-pointed star inside."""
    cv2.circle(frame, c, r, (255, 255, 255), ring, cv2.LINE_AA)
    for k in range(5):
        a = -math.pi / 2 + k * 4 * math.pi / 5
        b = -math.pi / 2 + (k + 1) * 4 * math.pi / 5
        p = (int(c[0] + 0.7 * r * math.cos(a)), int(c[1] + 0.7 * r * math.sin(a)))
        q = (int(c[0] + 0.7 * r * math.cos(b)), int(c[1] + 0.7 * r * math.sin(b)))
        cv2.line(frame, p, q, (255, 255, 255), line, cv2.LINE_AA)


def draw_watermark(frame: np.ndarray, corner: str = "top_right", name: str = "") -> Box:
    """A channel logo in a top corner of `frame` (in place): a ring with a star, 70% opaque; with a `name`, a
    channel bug instead: the logo and the name in bold on a dark plate, 85% opaque. Returns its box."""
    h, w = frame.shape[:2]
    logo = frame.copy()
    if name:
        plate, c, r, scale, org = _bug_layout(w, h, corner, name)
        _darken(frame, plate, 0.75)
        logo = frame.copy()
        _logo(logo, c, r, 2, 1)
        cv2.putText(logo, name, org, FONT, scale, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.addWeighted(logo, 0.85, frame, 0.15, 0, dst=frame)
    else:
        c, r, ring = _watermark_layout(w, h, corner)
        _logo(logo, c, r, ring, 2)
        cv2.addWeighted(logo, 0.7, frame, 0.3, 0, dst=frame)
    return watermark_box(w, h, corner, name)
