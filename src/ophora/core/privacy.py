"""Privacy filter (what P2FT removes): burned-in text and static overlays such as logos and watermarks.

Text is found with PP-OCRv4's text *detector* (shipped in the rapidocr-onnxruntime wheel); recognition is
never run, so no text that could name a patient is ever read, let alone logged. Overlays without text are
found as compact, edge-rich regions that stay fixed while the surgical view around them changes. The
optional `vlm` backend asks an OpenAI-compatible vision-language endpoint and only keeps its yes/no.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import cv2
import numpy as np

from ophora.core.config import option
from ophora.core.endpoint import chat_completions_url, public_url, request_headers
from ophora.core.errors import ConfigError, EndpointError, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("ocr", "vlm", "off")
VLM_PROMPT = ("These frames come from one surgical video clip. Is there any burned-in text, subtitle, caption, "
              "name, date, logo or watermark overlaid on the video? Answer with exactly one word: yes or no.")


@dataclass
class PrivacyConfig:
    """Which detectors run and when they flag a clip."""

    backend: str = option("ocr", "ocr: PP-OCRv4 text detector + static-overlay check; vlm: an OpenAI-compatible VLM "
                          "endpoint", flag="--privacy", choices=BACKENDS)
    frames: int = 30  # most text-detector frames per clip (curate offers one per second; spread evenly beyond)
    vlm_frames: int = 4  # frames per clip sent to the VLM, spread evenly over those offered
    ocr_long_side: int = 640
    min_text_area: float = 0.0005
    min_text_boxes: int = 1
    overlay: bool = True
    overlay_persistence: float = 0.8  # share of sampled frames in which an edge pixel must be an edge
    overlay_min_density: float = 0.15  # share of a region's box covered by persistent edges
    overlay_min_area: float = 0.004  # smaller persistent specks occur in slowly moving texture
    overlay_max_area: float = 0.06
    overlay_min_motion: float = 2.0  # mean temporal std (grey levels) the view needs for the check to apply
    min_box_aspect: float = 2.0  # a text line's length over its height
    max_text_height: float = 0.15  # a text line's height over the frame's
    min_stroke_transitions: float = 0.6  # dark/light changes along a line's rows per pixel of its height
    min_fixed_iou: float = 0.7  # a line at the same place (this overlap) in other detector frames is burned in
    min_fixed_frames: int = 2  # ... in at least this many other frames (a light reflex may hold still for one)
    margin_band: float = 0.15  # top and bottom bands (share of the height) searched again, contrast-normalised
    margin_long_side: int = 1536  # ... at the source's resolution, enlarged to this width (small corner text)
    margin_max_enlarge: float = 2.0  # ... but at most this much (a small source's texture enlarged 8x reads as text)
    margin_clahe: float = 6.0  # CLAHE clip limit of that contrast normalisation
    static_window: int = 6  # detector frames (one a second) per temporal median of the static-overlay check
    static_min_frames: int = 4  # fewer frames than this: no static check (too few to tell still from moving)
    static_sigma: float = 2.0  # the high-pass scale (pixels of the detector frame)
    static_gain: float = 3.0  # contrast gain of the static image shown to the text detector
    static_max_ring: float = 0.6  # stability of a line's surroundings above which the view there is still
    vlm_url: str | None = option(None, "e.g. http://localhost:8001/v1 (key from OPHORA_LLM_API_KEY)")
    vlm_model: str | None = option(None, "e.g. Qwen/Qwen2.5-VL-72B-Instruct, as the server names it")
    vlm_timeout: float = 60.0
    vlm_retries: int = 3
    threads: int = 1

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"privacy backend must be ocr, vlm or off, got {self.backend!r}")
        if self.backend == "vlm" and not (self.vlm_url and self.vlm_model):
            raise ConfigError("the vlm privacy backend needs --vlm-url and --vlm-model")


_ENGINES: dict[tuple[int, int], object] = {}


def text_detector(threads: int = 1, long_side: int = 640):
    """The PP-OCRv4 detector of rapidocr-onnxruntime, one per process, run at most `long_side` pixels wide."""
    if (threads, long_side) not in _ENGINES:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ModelError(f"rapidocr-onnxruntime is needed for the privacy filter: {exc}") from None
        # The packaged setting scales the *short* side up to 736 px, which costs 2-4x more for no gain on
        # burned-in text; cap the long side instead.
        _ENGINES[threads, long_side] = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                                                det_limit_type="max", det_limit_side_len=long_side)
    return _ENGINES[threads, long_side]


def _is_text_line(box: np.ndarray, frame_height: int, config: PrivacyConfig) -> bool:
    """Text lines are wide and not tall; striped or speckled tissue the detector fires on is neither."""
    (_, _), (w, h), _ = cv2.minAreaRect(box)
    short, long = min(w, h), max(w, h)
    return long >= config.min_box_aspect * max(short, 1.0) and short <= config.max_text_height * frame_height


def stroke_transitions(grey: np.ndarray, box: np.ndarray) -> float:
    """Dark/light changes along the rows of a box (Otsu split), per row and per pixel of the box's height.

    Letters put several strokes into every row of a line (about 1 or more per pixel of height); a specular
    reflex, a row of bubbles or an instrument edge the detector takes for a line has one or two.
    """
    x, y, w, h = cv2.boundingRect(box.astype(np.int32))
    crop = grey[max(y, 0):y + h, max(x, 0):x + w]
    if crop.size == 0 or crop.min() == crop.max():
        return 0.0
    _, ink = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(np.abs(np.diff(ink.astype(np.int8), axis=1)).sum(axis=1).mean() / max(h, 1))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax, ay, aw, ah = cv2.boundingRect(a.astype(np.int32))
    bx, by, bw, bh = cv2.boundingRect(b.astype(np.int32))
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / max(aw * ah + bw * bh - inter, 1)


def _fixed_in(box: np.ndarray, frames: list[list[np.ndarray]], config: PrivacyConfig) -> int:
    """In how many of `frames` (their text lines) a line covers the same place as `box`."""
    return sum(any(_iou(box, other) >= config.min_fixed_iou for other in lines) for lines in frames)


def _detect(engine, image: np.ndarray) -> list[np.ndarray]:
    found, _ = engine(image, use_det=True, use_cls=False, use_rec=False)
    return [np.asarray(b, np.float32) for b in found or []]


def band_strip(frame: np.ndarray, band: float) -> np.ndarray:
    """The frame's top and bottom bands (`band` of its height each), stacked: where burned-in text sits."""
    rows = round(band * frame.shape[0])
    return np.vstack([frame[:rows], frame[frame.shape[0] - rows:]])


def margin_boxes(frame: np.ndarray, config: PrivacyConfig, strip: np.ndarray | None = None) -> list[np.ndarray]:
    """Text boxes (in `frame`'s pixels) found in its top and bottom bands after local contrast normalisation.

    Burned-in captions, logos and timestamps sit at the frame's edges, often small or dark on the dark drape,
    where the whole-frame pass misses them; the bands are a small share of the frame, so they are searched
    enlarged to `margin_long_side` (at most `margin_max_enlarge` times). `strip` is the same bands at the source's resolution (curate's scan keeps
    them, `band_strip`): 12-px text of a 1024-px source is lost in the 640-px detector frame but not there.
    """
    h, w = frame.shape[:2]
    strip = band_strip(frame, config.margin_band) if strip is None else strip
    band = strip.shape[0] // 2  # one band's height, in the strip's pixels
    if band < 4 or config.margin_long_side <= 0:
        return []
    lab = cv2.cvtColor(strip, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=config.margin_clahe, tileGridSize=(8, 8)).apply(lab[..., 0])
    scale = min(config.margin_long_side / strip.shape[1], config.margin_max_enlarge)
    big = cv2.resize(cv2.cvtColor(lab, cv2.COLOR_LAB2BGR), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    engine = text_detector(config.threads, config.margin_long_side)
    source_h = h * strip.shape[1] / w  # the frame's height in the strip's pixels
    boxes = []
    for box in _detect(engine, big):
        box = box / scale
        top, bottom = float(box[:, 1].min()), float(box[:, 1].max())
        if top >= band:  # the bottom band: back to its place in the frame
            box = box + np.float32([0, source_h - 2 * band])
        elif bottom > band:
            continue  # a box across the seam joins the two bands: not one line of the frame
        boxes.append(box * np.float32(w / strip.shape[1]))
    return boxes


def _new(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    """Whether `box`'s centre lies outside all of `boxes` (the margin pass finds the whole-frame pass's lines again)."""
    centre = tuple(float(v) for v in box.mean(axis=0))
    return all(cv2.pointPolygonTest(other.reshape(-1, 1, 2), centre, False) < 0 for other in boxes)


def text_scores(frames: list[np.ndarray], config: PrivacyConfig,
                strips: list[np.ndarray] | None = None) -> dict[str, float]:
    """Largest fraction of a frame covered by text lines, and the most lines in one frame.

    Boxes come from the whole frame and from its contrast-normalised, enlarged margins (`margin_boxes`, from
    `strips`, the frames' bands at the source's resolution, where given). A box
    is a text line when it has a line's shape (`_is_text_line`) and either the stroke texture of letters
    (`stroke_transitions`) or stays at the same place in two more of the clip's frames (burned in, while
    reflexes and bubbles move with the view).
    """
    engine = text_detector(config.threads, config.ocr_long_side)
    lines = []
    for i, frame in enumerate(frames):
        boxes = _detect(engine, frame)
        boxes += [b for b in margin_boxes(frame, config, strips[i] if strips else None) if _new(b, boxes)]
        lines.append([b for b in boxes if _is_text_line(b, frame.shape[0], config)])
    area, count = 0.0, 0
    for i, frame in enumerate(frames):
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        others = [other for j, other in enumerate(lines) if j != i]
        text = [b for b in lines[i] if stroke_transitions(grey, b) >= config.min_stroke_transitions
                or _fixed_in(b, others, config) >= config.min_fixed_frames]
        area = max(area, sum(cv2.contourArea(b) for b in text) / (frame.shape[0] * frame.shape[1]))
        count = max(count, len(text))
    return {"text_area": area, "text_boxes": float(count)}


def overlay_score(greys: np.ndarray, config: PrivacyConfig) -> float:
    """Area fraction of the largest compact region of persistent edges inside a moving view (0 if none).

    A logo or watermark keeps its edges in the same pixels in almost every frame, while the edges of
    tissue and instruments wander as the view moves. Regions of persistent edges that are compact and
    dense count; the long thin circle of a microscope's field stop does not.
    """
    if len(greys) < 3 or float(greys.astype(np.float32).std(axis=0).mean()) < config.overlay_min_motion:
        return 0.0
    persistence = np.mean([cv2.Canny(s, 50, 120) > 0 for s in greys], axis=0)
    steady = (persistence >= config.overlay_persistence).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(steady, np.ones((5, 5), np.uint8)))
    h, w = steady.shape
    best = 0.0
    for x, y, bw, bh, _ in stats[1:count]:
        box = bw * bh / (h * w)
        if (config.overlay_min_area <= box <= config.overlay_max_area and max(bw / w, bh / h) < 0.35
                and steady[y:y + bh, x:x + bw].mean() >= config.overlay_min_density):
            best = max(best, float(box))
    return best


def _stability(median: np.ndarray, energy: np.ndarray, mask: np.ndarray) -> float:
    """Share of the high-pass energy under `mask` that is the same in every frame (1 still, ~0 moving)."""
    total = float(energy[mask].sum())
    return float(np.abs(median[mask]).sum()) / total if total > 0 else 0.0


def _ring(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The surroundings of a line: its box grown by 4 line heights, less the box grown by one (where the rest
    of a logo or a caption's backing box may lie)."""
    x, y, w, h = cv2.boundingRect(box.astype(np.int32))
    ring = np.zeros(shape, bool)
    ring[max(y - 4 * h, 0):y + 5 * h, max(x - 4 * h, 0):x + w + 4 * h] = True
    ring[max(y - h, 0):y + 2 * h, max(x - h, 0):x + w + h] = False
    return ring


def static_boxes(frames: list[np.ndarray], config: PrivacyConfig) -> list[np.ndarray]:
    """Text lines and logos that stay put in frame coordinates while the view around them moves.

    The per-pixel temporal median of the frames' high-pass images keeps what is the same in every frame (a
    burned-in overlay, however faint or translucent) and cancels the drifting scene; the text detector then
    runs on that median, amplified, where faint overlays stand out on a flat background. A line counts when
    its surroundings move (their high-pass energy is mostly not static): on a still view everything is static
    and the check abstains.
    """
    if len(frames) < config.static_min_frames:
        return []
    engine = text_detector(config.threads, config.ocr_long_side)
    step = max(1, config.static_window // 2)
    starts = range(0, max(1, len(frames) - config.static_window + 1), step)
    boxes = []
    for first in starts:
        stack = np.stack(frames[first:first + config.static_window]).astype(np.float32)
        high = stack - np.stack([cv2.GaussianBlur(f, (0, 0), config.static_sigma) for f in stack])
        median = np.median(high, axis=0)
        energy = np.abs(high).mean(axis=0)
        image = np.clip(128 + config.static_gain * median, 0, 255).astype(np.uint8)
        h, w = image.shape[:2]
        for box in _detect(engine, image):
            if not _is_text_line(box, h, config):
                continue
            if _stability(median, energy, _ring(box, (h, w))) <= config.static_max_ring:
                boxes.append(box)
    return boxes


def _jpeg_data_url(frame: np.ndarray) -> str:
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def vlm_flag(frames: list[np.ndarray], config: PrivacyConfig) -> float:
    """Ask the vision-language endpoint; 1.0 when it says yes, 0.0 when no (retries with backoff)."""
    content = [{"type": "text", "text": VLM_PROMPT}] + [
        {"type": "image_url", "image_url": {"url": _jpeg_data_url(f)}} for f in frames]
    body = json.dumps({"model": config.vlm_model, "temperature": 0, "max_tokens": 3,
                       "messages": [{"role": "user", "content": content}]}).encode()
    headers = request_headers(config.vlm_url)
    url = chat_completions_url(config.vlm_url)
    error = "no attempt"
    for attempt in range(config.vlm_retries):
        try:
            request = urllib.request.Request(url, data=body, headers=headers)
            with urllib.request.urlopen(request, timeout=config.vlm_timeout) as response:
                answer = json.load(response)["choices"][0]["message"]["content"].strip().lower()
            if answer.startswith(("yes", "no")):
                return 1.0 if answer.startswith("yes") else 0.0
            error = "answer was neither yes nor no"
        except (urllib.error.URLError, TimeoutError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
            error = type(exc).__name__
        time.sleep(min(2 ** attempt * 0.5, 8))
    raise EndpointError(f"vlm privacy endpoint {public_url(url)} failed after {config.vlm_retries} tries ({error})")


def privacy_scores(frames: list[np.ndarray], greys: np.ndarray, config: PrivacyConfig,
                   strips: list[np.ndarray] | None = None) -> dict[str, float]:
    """All privacy scores of one clip (absent detectors score 0); `strips`: the frames' bands at source resolution."""
    scores = {"text_area": 0.0, "text_boxes": 0.0, "overlay_area": 0.0, "vlm_flag": 0.0}
    if config.backend == "ocr" and frames:
        scores.update(text_scores(frames, config, strips))
    if config.backend == "ocr" and config.overlay:
        h, w = frames[0].shape[:2] if frames else (1, 1)
        fixed = sum(cv2.contourArea(b) for b in static_boxes(frames, config)) / (h * w)
        scores["overlay_area"] = max(overlay_score(greys, config), fixed)
    if config.backend == "vlm" and frames:
        picked = np.linspace(0, len(frames) - 1, min(config.vlm_frames, len(frames))).round().astype(int)
        scores["vlm_flag"] = vlm_flag([frames[i] for i in picked], config)
    return scores


def privacy_reason(scores: dict[str, float], config: PrivacyConfig) -> str:
    """Why a clip leaves the privacy-preserved subset ("" when it stays)."""
    if scores["text_boxes"] >= config.min_text_boxes and scores["text_area"] >= config.min_text_area:
        return "text"
    if scores["overlay_area"] > 0:
        return "overlay"
    if scores["vlm_flag"] > 0:
        return "vlm"
    return ""
