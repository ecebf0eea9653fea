"""Privacy leakage: does the curation stage's own burned-in text / overlay detector fire on a generated video?

The detectors, their settings and their thresholds are `ophora.core.privacy`'s, as `ophora curate` runs
them; this module only feeds them a video the way curate feeds them a clip: colour frames once a second
(long side at most `ocr_long_side`, JPEG quality 90, BGR), `frames` of them spread evenly for the text
detector, and grey samples 256 pixels wide at 4 per second for the static-overlay check (area scaling).
"""

from __future__ import annotations

import cv2
import numpy as np

from ophora.core.privacy import PrivacyConfig, privacy_reason, privacy_scores

GREY_FPS = 4.0  # curate's FilterConfig.grey_fps default
GREY_WIDTH = 256  # curate's FilterConfig.grey_width default
OCR_INTERVAL = 1.0  # curate's FilterConfig.ocr_interval default


def _size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _every(times: np.ndarray, interval: float) -> list[int]:
    picked, next_t = [], 0.0
    for i, t in enumerate(times):
        if t >= next_t:
            picked.append(i)
            next_t = t + interval
    return picked


def detector_inputs(frames: np.ndarray, fps: float, config: PrivacyConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """(text-detector frames, grey samples) of uint8 RGB frames (N, H, W, 3) as curate makes them."""
    fps = fps or 8.0
    times = np.arange(len(frames)) / fps
    h, w = frames.shape[1:3]
    grey_size, ocr_size = _size(w, h, GREY_WIDTH), _size(w, h, config.ocr_long_side)
    samples = np.stack([cv2.cvtColor(cv2.resize(frames[i], grey_size, interpolation=cv2.INTER_AREA),
                                     cv2.COLOR_RGB2GRAY) for i in _every(times, 1.0 / GREY_FPS)])
    ocr = _every(times, OCR_INTERVAL)
    if len(ocr) > config.frames:
        ocr = [ocr[i] for i in np.linspace(0, len(ocr) - 1, config.frames).round().astype(int)]
    text_frames = []
    for i in ocr:
        bgr = cv2.cvtColor(cv2.resize(frames[i], ocr_size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
        jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
        text_frames.append(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    return text_frames, samples


def leakage_record(frames: np.ndarray, fps: float, config: PrivacyConfig) -> dict:
    """The detector scores of one video and the reason it is flagged ("" when it is not)."""
    text_frames, samples = detector_inputs(frames, fps, config)
    scores = privacy_scores(text_frames, samples, config)
    return {**{k: float(v) for k, v in scores.items()}, "reason": privacy_reason(scores, config)}
