"""`ophora make-narrated-videos`: synthetic narrated cataract-surgery videos with known curation ground truth.

Each video shows a procedurally drawn eye under a drifting microscope with moving instruments, and comes
with a narration sidecar (.srt, rolling auto-caption .en.vtt, or Whisper JSON). Segments carry the things
curation must catch: burned-in captions, a corner watermark, a scene cut, a frozen stretch, a black
stretch, a title card, a video below 720x480 and a video without narration. `ground_truth.json` says what
should happen to every clip.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ophora.core.files import write_json
from ophora.core.media import VideoWriter
from ophora.synthetic.overlays import draw_caption, draw_watermark

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """Seconds [start, end) of a narrated video: what is narrated, what is drawn, what curation should decide."""

    start: float
    end: float
    narration: str
    effect: str = "clean"  # clean, caption, watermark, cut, frozen, black, title
    expect: str = "keep"  # keep or the drop reason (no_instruction: narration with nothing visible)
    privacy: str = ""  # "", "text" or "overlay": why it should leave the privacy-preserved subset


@dataclass
class NarratedVideo:
    stem: str
    width: int
    height: int
    sidecar: str  # srt, vtt, json or "" (none)
    segments: list[Segment] = field(default_factory=list)


def narrated_plan() -> list[NarratedVideo]:
    """The narrated videos and their ground truth (one clip per segment, clip index = segment index)."""
    return [
        NarratedVideo("cataract_a", 854, 480, "srt", [
            Segment(0, 5, "Now we make the main incision with the keratome at the temporal limbus."),
            Segment(5, 10, "We inject viscoelastic to fill and protect the anterior chamber.", "caption", "keep", "text"),
            Segment(10, 15, "The capsulorhexis is started with a bent cystotome needle.", "frozen", "static"),
            Segment(15, 20, "The capsulorhexis is completed with forceps in a circular motion."),
            Segment(20, 26, "Hydrodissection is performed with a cannula under the anterior capsule.", "cut"),
            Segment(26, 31, "Phacoemulsification of the nucleus begins in the capsular bag.", "black", "black"),
        ]),
        NarratedVideo("cataract_b", 854, 480, "vtt", [
            Segment(0, 5, "the phaco tip sculpts a deep groove in the nucleus", "watermark", "keep", "overlay"),
            Segment(5, 10, "the second instrument rotates the nucleus to continue sculpting", "watermark", "keep", "overlay"),
            Segment(10, 15, "the nucleus is cracked into two halves with both instruments"),
            Segment(15, 20, "chapter two lens implantation", "title", "blank_or_slide"),
            Segment(20, 25, "the remaining cortex is aspirated with the irrigation aspiration handpiece"),
        ]),
        NarratedVideo("cataract_c", 854, 480, "json", [
            Segment(0, 5, "Hello everyone and welcome back to my channel, please subscribe.", "clean", "no_instruction"),
            Segment(5, 10, "The intraocular lens is injected into the capsular bag."),
            Segment(10, 15, "The lens haptics are dialed into position with a hook."),
            Segment(15, 20, "Viscoelastic is removed from behind the lens with the aspiration tip."),
        ]),
        NarratedVideo("lowres_d", 640, 360, "srt", [
            Segment(0, 5, "A side port incision is made with a blade.", "clean", "resolution"),
            Segment(5, 10, "Trypan blue is injected to stain the anterior capsule.", "clean", "resolution"),
        ]),
        NarratedVideo("no_narration_e", 854, 480, "", [Segment(0, 6, "")]),
    ]


class EyeScene:
    """A procedurally drawn eye under the microscope: a textured field that drifts, with moving instruments."""

    def __init__(self, width: int, height: int, seed: int, hue_shift: int = 0, zoom: float = 1.0):
        rng = np.random.default_rng(seed)
        self.width, self.height, self.margin = width, height, 24
        w, h = width + 2 * self.margin, height + 2 * self.margin
        noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6)
        noise = noise / (noise.std() + 1e-6)
        fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
        base = np.stack([70 + 18 * noise + 6 * fine, 80 + 15 * noise + 6 * fine, 170 + 25 * noise + 8 * fine], -1)
        image = np.clip(base, 0, 255).astype(np.uint8)
        c = (w // 2, h // 2)
        r = int(min(w, h) * 0.42 * zoom)
        cv2.ellipse(image, c, (int(r * 1.25), r), 0, 0, 360, (215, 220, 230), -1)  # sclera
        vessels = np.zeros((h, w), np.uint8)
        for _ in range(40):  # winding vessels on the sclera
            a = rng.uniform(0, 2 * math.pi)
            rad = r * rng.uniform(0.7, 1.2)
            points = [(c[0] + 1.25 * rad * math.cos(a + 0.04 * k) + 4 * math.sin(k), c[1] + rad * math.sin(a + 0.04 * k))
                      for k in range(12)]
            cv2.polylines(vessels, [np.int32(points)], False, 255, 1)
        image[(vessels > 0) & (image[..., 0] > 200)] = (60, 60, 170)
        iris = int(r * 0.62)
        angles = np.arctan2(*np.mgrid[-c[1]:h - c[1], -c[0]:w - c[0]])
        stripes = (np.sin(angles * 40) * 25).astype(np.float32)
        iris_color = np.zeros_like(image)
        iris_color[:] = (60, 100, 120)
        iris_color = np.clip(iris_color + stripes[..., None], 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, c, iris, 255, -1)
        image[mask > 0] = iris_color[mask > 0]
        pupil = int(iris * 0.55)
        cv2.circle(image, c, pupil, (40, 90, 200), -1)  # red reflex through the pupil
        if hue_shift:
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(int) + hue_shift) % 180
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        self.image, self.center, self.radius, self.pupil_radius = image, c, r, pupil

    def view(self, t: float) -> tuple[np.ndarray, tuple[float, float]]:
        """The BGR view at time t (seconds) without instruments, and where the eye's centre is in it."""
        dx = self.margin * 0.8 * math.sin(0.7 * t)
        dy = self.margin * 0.6 * math.sin(0.5 * t + 1.0)
        shift = np.float32([[1, 0, -self.margin + dx], [0, 1, -self.margin + dy]])
        frame = cv2.warpAffine(self.image, shift, (self.width, self.height), borderMode=cv2.BORDER_REFLECT)
        return frame, (self.center[0] - self.margin + dx, self.center[1] - self.margin + dy)

    def frame(self, t: float) -> np.ndarray:
        """The BGR frame at time t (seconds): the view with two moving steel instruments."""
        frame, (cx, cy) = self.view(t)
        for k, (phase, base_angle) in enumerate(((0.0, -0.5), (1.7, 3.6))):
            angle = base_angle + 0.35 * math.sin(1.3 * t + phase)
            reach = self.radius * (0.25 + 0.15 * math.sin(2.1 * t + phase))
            tip = (int(cx + reach * math.cos(angle)), int(cy + reach * math.sin(angle)))
            tail = (int(cx + 3 * self.radius * math.cos(angle)), int(cy + 3 * self.radius * math.sin(angle)))
            cv2.line(frame, tail, tip, (150, 155, 160), 9 - 3 * k, cv2.LINE_AA)
            cv2.circle(frame, tip, 6 - 2 * k, (200, 205, 210), -1, cv2.LINE_AA)
        return frame


def _title_card(width: int, height: int, text: str) -> np.ndarray:
    card = np.full((height, width, 3), (90, 50, 20), np.uint8)
    draw_caption(card, text.upper())
    return card


def render_frame(video: NarratedVideo, scenes: list[EyeScene], t: float, frozen: dict[int, np.ndarray]) -> np.ndarray:
    """The RGB frame of `video` at time t, with its segment's effect applied."""
    index, seg = next(((i, s) for i, s in enumerate(video.segments) if s.start <= t < s.end),
                      (len(video.segments) - 1, video.segments[-1]))
    if seg.effect == "black":
        frame = np.zeros((video.height, video.width, 3), np.uint8)
    elif seg.effect == "title":
        frame = _title_card(video.width, video.height, "Chapter 2")
    elif seg.effect == "frozen":
        frame = frozen.setdefault(index, scenes[0].frame(seg.start))
    else:
        scene = scenes[1] if seg.effect == "cut" and t >= seg.start + 2.0 else scenes[0]
        frame = scene.frame(t)
        if seg.effect == "caption":
            frame = frame.copy()
            draw_caption(frame, "Dr. Jane Example  -  patient 0423  -  14.03.2024")
        elif seg.effect == "watermark":
            frame = frame.copy()
            draw_watermark(frame)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_sidecar(video: NarratedVideo, folder: Path) -> Path | None:
    """The narration file in the video's sidecar format (auto-captions roll, as YouTube writes them)."""
    segs = [s for s in video.segments if s.narration]
    if video.sidecar == "srt":
        text = "\n".join(f"{i + 1}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.narration}\n"
                         for i, s in enumerate(segs))
        path = folder / f"{video.stem}.srt"
    elif video.sidecar == "vtt":
        lines = ["WEBVTT", "Kind: captions", "Language: en", ""]
        previous = ""
        for s in segs:
            words = s.narration.split()
            half = len(words) // 2
            for a, b, part in ((s.start, s.start + 2.5, words[:half]), (s.start + 2.5, s.end, words[half:])):
                line = " ".join(part)
                lines += [f"{_timestamp(a, '.')} --> {_timestamp(b - 0.01, '.')} align:start position:0%",
                          previous or " ", line, "",
                          f"{_timestamp(b - 0.01, '.')} --> {_timestamp(b, '.')} align:start position:0%",
                          line, " ", ""]
                previous = line
        text = "\n".join(lines)
        path = folder / f"{video.stem}.en.vtt"
    elif video.sidecar == "json":
        text = json.dumps({"language": "en", "segments": [
            {"id": i, "start": s.start, "end": s.end, "text": " " + s.narration} for i, s in enumerate(segs)]}, indent=1)
        path = folder / f"{video.stem}.json"
    else:
        return None
    path.write_text(text, encoding="utf-8")
    return path


def ground_truth(videos: list[NarratedVideo]) -> dict:
    """Expected decision per clip id and expected skipped sources."""
    clips, sources = {}, {}
    for video in videos:
        if not video.sidecar:
            sources[f"{video.stem}.mp4"] = "no_narration"
            continue
        for i, seg in enumerate(video.segments):
            clips[f"{video.stem}_{i}"] = {"start": seg.start, "end": seg.end, "effect": seg.effect,
                                          "decision": "keep" if seg.expect == "keep" else "drop",
                                          "reason": "" if seg.expect == "keep" else seg.expect,
                                          "privacy": seg.privacy}
    return {"clips": clips, "skipped_sources": sources}


def write_narrated_video(video: NarratedVideo, out: Path, fps: float, seed: int, keyint: int | None = None) -> Path:
    """Render and encode one narrated video and write its narration sidecar; returns the video path."""
    scenes = [EyeScene(video.width, video.height, seed=seed),
              EyeScene(video.width, video.height, seed=seed + 1, hue_shift=60, zoom=0.7)]
    frozen: dict[int, np.ndarray] = {}
    duration = video.segments[-1].end
    path = out / f"{video.stem}.mp4"
    with VideoWriter(path, fps, video.width, video.height, crf=20, preset="veryfast",
                     keyint=keyint or int(round(fps))) as writer:
        for i in range(int(round(duration * fps))):
            writer.write(render_frame(video, scenes, i / fps, frozen))
    write_sidecar(video, out)
    log.info("wrote %s (%dx%d, %.0f s)", video.stem, video.width, video.height, duration)
    return path


def make_narrated_videos(out: str | Path, fps: float = 15.0) -> Path:
    """Write the narrated videos, their sidecars and `ground_truth.json` into `out`; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos = narrated_plan()
    for n, video in enumerate(videos):
        write_narrated_video(video, out, fps, seed=10 * n)
    write_json(out / "ground_truth.json", ground_truth(videos))
    return out
