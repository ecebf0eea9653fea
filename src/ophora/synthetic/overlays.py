"""Burned-in overlays of synthetic surgery videos: a caption line and a text-free corner watermark.

Both are drawn in place on a frame and have a pure-geometry box function, so a video's ground truth can
name the pixels an overlay touches before anything is drawn. Sizes follow the frame's width (as in an
854x480 upload) but never fall below a legible floor, so a caption stays readable at 192x128.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_CAPTION_SCALE = 0.4  # Hershey scale 0.4: capitals about 9 pixels high
CORNERS = ("top_right", "top_left")
Box = tuple[int, int, int, int]  # x0, y0, x1, y1: the pixels [x0, x1) x [y0, y1)


def _caption_layout(width: int, height: int, text: str) -> tuple[float, int, int, tuple[int, int]]:
    """Scale, letter and outline thickness, and the text origin of a bottom-centred caption."""
    scale = max(width / 900, MIN_CAPTION_SCALE)
    thickness = 2 if scale >= 0.6 else 1
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return scale, thickness, 3 * thickness, ((width - tw) // 2, height - int(0.08 * height))


def _caption_extent(width: int, height: int, text: str) -> Box:
    """The pixels `draw_caption` may change (outline and anti-aliasing included), not clipped to the frame."""
    scale, _, outline, (x, y) = _caption_layout(width, height, text)
    (tw, th), baseline = cv2.getTextSize(text, FONT, scale, outline)  # the outline reaches furthest
    pad = outline // 2 + 2
    return x - pad, y - th - pad, x + tw + pad, y + baseline + pad


def caption_box(width: int, height: int, text: str) -> Box:
    """The pixels `draw_caption` may change, clipped to the frame."""
    x0, y0, x1, y1 = _caption_extent(width, height, text)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def caption_fits(width: int, height: int, text: str) -> bool:
    """Whether the whole caption line lies inside a frame of this size."""
    return caption_box(width, height, text) == _caption_extent(width, height, text)


def draw_caption(frame: np.ndarray, text: str) -> Box:
    """A white, black-outlined caption line at the bottom centre of `frame` (in place); returns its box."""
    h, w = frame.shape[:2]
    scale, thickness, outline, org = _caption_layout(w, h, text)
    cv2.putText(frame, text, org, FONT, scale, (0, 0, 0), outline, cv2.LINE_AA)
    cv2.putText(frame, text, org, FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return caption_box(w, h, text)


def _watermark_layout(width: int, height: int, corner: str) -> tuple[tuple[int, int], int, int]:
    """Centre, radius and ring thickness of the logo in `corner`."""
    if corner not in CORNERS:
        raise ValueError(f"watermark corner must be one of {', '.join(CORNERS)}, got {corner!r}")
    r = max(int(0.05 * height), 9)
    x = width - int(0.08 * width) if corner == "top_right" else int(0.08 * width)
    return (max(min(x, width - r - 3), r + 3), max(int(0.1 * height), r + 3)), r, 3 if r >= 20 else 2


def watermark_box(width: int, height: int, corner: str = "top_right") -> Box:
    """The pixels `draw_watermark` may change, clipped to the frame."""
    (cx, cy), r, ring = _watermark_layout(width, height, corner)
    pad = r + ring // 2 + 2
    return (max(cx - pad, 0), max(cy - pad, 0), min(cx + pad + 1, width), min(cy + pad + 1, height))


def draw_watermark(frame: np.ndarray, corner: str = "top_right") -> Box:
    """A text-free channel logo (a ring with a star), 70% opaque, in a top corner of `frame` (in place)."""
    h, w = frame.shape[:2]
    c, r, ring = _watermark_layout(w, h, corner)
    logo = frame.copy()
    cv2.circle(logo, c, r, (255, 255, 255), ring, cv2.LINE_AA)
    for k in range(5):
        a = -math.pi / 2 + k * 4 * math.pi / 5
        b = -math.pi / 2 + (k + 1) * 4 * math.pi / 5
        p = (int(c[0] + 0.7 * r * math.cos(a)), int(c[1] + 0.7 * r * math.sin(a)))
        q = (int(c[0] + 0.7 * r * math.cos(b)), int(c[1] + 0.7 * r * math.sin(b)))
        cv2.line(logo, p, q, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.addWeighted(logo, 0.7, frame, 0.3, 0, dst=frame)
    return watermark_box(w, h, corner)
