"""Real-frame test clips for the privacy filter: Cataract-1K views with burned-in text and overlays, and clean twins.

Each clip is a moving view made from the real frames in `../shared/data/real/` (a still frame under a slow
microscope drift and zoom, or a window of the consecutive lens-implantation frames), 1024x768 at 25 fps,
with a narration sidecar so `ophora curate` takes it as one clip. Overlay clips carry one kind of burned-in
content (subtitles, a patient name and date, a hospital logo, a watermark, a running timestamp, a text box,
semi-transparent text, small corner text, coloured text), in varied sizes, colours, positions and display
times down to one second. Every overlay clip has a clean twin of the same view and motion; a third of the
twins get a row of air bubbles and a third specular glints, the things a text detector confuses with text.
All text is made up from random letters and digits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ophora.core.media import VideoWriter

KINDS = ("subtitle", "patient_name", "logo", "watermark", "timestamp", "text_box", "translucent", "corner_small",
         "coloured")
EXTRAS = ("", "bubbles", "glints")  # what a clean twin adds to its view
POSITIONS = ("bottom", "top", "top_left", "top_right", "bottom_left", "bottom_right", "centre")
COLOURS = {"white": (255, 255, 255), "yellow": (255, 230, 40), "green": (60, 230, 90), "cyan": (60, 220, 255),
           "red": (240, 50, 40), "black": (10, 10, 10), "orange": (255, 150, 20)}
SIZE = (1024, 768)
FPS = 25.0
SECONDS = 6.0
NARRATION = "The intraocular lens is positioned in the capsular bag with a hook."


@dataclass
class PrivacyClip:
    """One test clip: its view and motion, and what is burned in (kind "" for a clean twin)."""

    name: str
    view: str  # a file name under cataract1k_frames/images, or "sequence:<first frame index>"
    motion_seed: int
    kind: str = ""
    position: str = "bottom"
    colour: str = "white"
    text_px: int = 28  # letter height in pixels at 1024x768
    shown_s: float = SECONDS  # how long the overlay is on screen
    shown_from: float = 0.0
    extra: str = ""  # clean twins: "", "bubbles" or "glints"
    seconds: float = SECONDS  # the clip's length

    @property
    def flagged(self) -> bool:
        """Whether the privacy filter should flag this clip."""
        return bool(self.kind)


def views(real: Path) -> list[str]:
    """Every view the real data offers: its 15 still frames and 4 windows of the lens-implantation sequence."""
    stills = sorted(p.name for p in (real / "cataract1k_frames" / "images").glob("*.png"))
    return stills + [f"sequence:{i}" for i in (0, 30, 60, 90)]


def plan_clips(real: Path, per_kind: int = 4, seed: int = 0) -> list[PrivacyClip]:
    """`per_kind` overlay clips of each kind, varied in view, position, colour, size and display time, and a clean
    twin of each. Another `seed` also pairs the kinds with other views (seed 0 keeps the first pairing)."""
    rng = np.random.default_rng(seed)
    pool = views(real)
    durations = (1.0, 2.0, 1.0, SECONDS)  # a quarter shown the whole clip, half for one second
    clips = []
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            view = pool[(k * per_kind + i + 7 * seed) % len(pool)]
            shown = SECONDS if kind in {"logo", "watermark", "timestamp"} else durations[i % len(durations)]
            position = ("centre" if kind == "watermark" else
                        POSITIONS[int(rng.integers(2, 6))] if kind in {"logo", "corner_small", "timestamp"} else
                        "bottom" if kind == "subtitle" else POSITIONS[int(rng.integers(len(POSITIONS)))])
            colour = ("white" if kind in {"subtitle", "translucent", "watermark"} and i % 2 == 0 else
                      list(COLOURS)[int(rng.integers(len(COLOURS)))] if kind != "coloured" else
                      ("yellow", "green", "red", "cyan", "orange")[i % 5])
            text_px = {"corner_small": int(rng.integers(11, 16)), "watermark": int(rng.integers(40, 64)),
                       "logo": int(rng.integers(40, 70))}.get(kind, int(rng.integers(16, 40)))
            clip = PrivacyClip(f"{kind}_{i}", view, int(rng.integers(1 << 30)), kind, position, colour, text_px,
                               shown, float(rng.uniform(0.3, SECONDS - shown)) if shown < SECONDS else 0.0)
            clips.append(clip)
            clips.append(PrivacyClip(f"clean_{kind}_{i}", view, clip.motion_seed, extra=EXTRAS[(k + i) % 3]))
    return clips


# ---------------------------------------------------------------------------------------------- views


def _source_frames(real: Path, view: str, count: int) -> list[np.ndarray]:
    """`count` RGB source frames of a view at 1024x768 (a still frame repeated, or the sequence at ~12 fps)."""
    if view.startswith("sequence:"):
        files = sorted((real / "cataract1k_iol_sequence").glob("*.jpg"))
        first = int(view.split(":")[1])
        picked = [files[min(first + int(i * 12 / FPS), len(files) - 1)] for i in range(count)]
        cache: dict[Path, np.ndarray] = {}
        for path in picked:
            if path not in cache:
                cache[path] = cv2.resize(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), SIZE,
                                         interpolation=cv2.INTER_CUBIC)
        return [cache[p] for p in picked]
    image = cv2.cvtColor(cv2.imread(str(real / "cataract1k_frames" / "images" / view)), cv2.COLOR_BGR2RGB)
    return [cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)] * count


def _drift(frame: np.ndarray, t: float, seed: int) -> np.ndarray:
    """The frame under a slow microscope drift and zoom (a few pixels per frame, as a hand-held view moves)."""
    rng = np.random.default_rng(seed)
    fx, fy, phase = rng.uniform(0.08, 0.2), rng.uniform(0.08, 0.2), rng.uniform(0, 2 * math.pi)
    scale = 1.12 + 0.05 * math.sin(2 * math.pi * 0.1 * t + phase)
    dx = 40 * math.sin(2 * math.pi * fx * t + phase)
    dy = 30 * math.sin(2 * math.pi * fy * t + 2 * phase)
    w, h = SIZE
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 2 * math.sin(0.3 * t + phase), scale)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(frame, matrix, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _bubbles(frame: np.ndarray, seed: int) -> np.ndarray:
    """A row of small air bubbles (dark rim, bright specular dot) in the anterior chamber, as often seen."""
    rng = np.random.default_rng(seed + 1)
    out = frame.copy()
    x, y = int(rng.uniform(380, 520)), int(rng.uniform(330, 430))
    for _ in range(int(rng.integers(5, 10))):
        r = int(rng.integers(6, 13))
        cv2.circle(out, (x, y), r, (70, 40, 30), 2, cv2.LINE_AA)
        cv2.circle(out, (x - r // 3, y - r // 3), max(1, r // 4), (255, 255, 250), -1, cv2.LINE_AA)
        x, y = x + 2 * r + int(rng.integers(1, 6)), y + int(rng.integers(-3, 4))
    return cv2.addWeighted(out, 0.85, frame, 0.15, 0)


def _glints(frame: np.ndarray, seed: int) -> np.ndarray:
    """Specular highlights: small bright elongated reflections of the microscope light on cornea and instruments."""
    rng = np.random.default_rng(seed + 2)
    out = frame.copy()
    for _ in range(int(rng.integers(4, 9))):
        centre = (int(rng.uniform(300, 720)), int(rng.uniform(220, 560)))
        axes = (int(rng.integers(6, 30)), int(rng.integers(2, 6)))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(out, (0, 0), 1.0)


# ---------------------------------------------------------------------------------------------- overlays


def _words(rng: np.random.Generator, count: int) -> str:
    letters = "abcdefghijklmnoprstuvwyz"
    return " ".join("".join(rng.choice(list(letters), int(rng.integers(3, 9)))).capitalize() for _ in range(count))


def _overlay_text(clip: PrivacyClip, t: float) -> str:
    """The made-up text of a clip's overlay at time `t` (a timestamp runs)."""
    rng = np.random.default_rng(clip.motion_seed)
    day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(2015, 2025))
    if clip.kind == "timestamp":
        s = int(rng.integers(0, 3000)) + int(t)
        return f"{year}-{month:02d}-{day:02d} {10 + s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    if clip.kind == "patient_name":
        return f"{_words(rng, 2)}  {day:02d}.{month:02d}.{year}  ID {int(rng.integers(10000, 99999))}"
    if clip.kind == "watermark":
        return _words(rng, 2).upper()
    if clip.kind == "logo":
        return _words(rng, 1).upper()
    return _words(rng, int(rng.integers(3, 7)))


def _anchor(position: str, box: tuple[int, int]) -> tuple[int, int]:
    w, h = SIZE
    bw, bh = box
    margin = 24
    x = {"top_left": margin, "bottom_left": margin, "top_right": w - bw - margin, "bottom_right": w - bw - margin}.get(
        position, (w - bw) // 2)
    y = {"top": margin, "top_left": margin, "top_right": margin, "centre": (h - bh) // 2}.get(position, h - bh - margin)
    return x, y


def _draw_overlay(frame: np.ndarray, clip: PrivacyClip, t: float) -> np.ndarray:
    """The frame with the clip's overlay burned in (PIL text; alpha-blended where the kind is semi-transparent)."""
    font = ImageFont.load_default(size=clip.text_px)
    colour = COLOURS[clip.colour]
    text = _overlay_text(clip, t)
    layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box = (right - left, bottom - top)
    if clip.kind == "logo":  # an emblem beside a short name
        box = (box[0] + int(1.4 * clip.text_px), max(box[1], clip.text_px))
    x, y = _anchor(clip.position, box)
    alpha = {"translucent": 110, "watermark": 80}.get(clip.kind, 255)
    if clip.kind == "text_box":
        back = (0, 0, 0) if sum(colour) > 300 else (235, 235, 235)
        draw.rectangle((x - 10, y - 8, x + box[0] + 10, y + box[1] + 10), fill=(*back, 200))
    if clip.kind == "logo":
        r = clip.text_px // 2
        draw.ellipse((x, y, x + 2 * r, y + 2 * r), outline=(*colour, alpha), width=max(2, r // 6))
        draw.rectangle((x + r - r // 5, y + r // 3, x + r + r // 5, y + 2 * r - r // 3), fill=(*colour, alpha))
        draw.rectangle((x + r // 3, y + r - r // 5, x + 2 * r - r // 3, y + r + r // 5), fill=(*colour, alpha))
        x += int(1.4 * clip.text_px)
    stroke = max(1, clip.text_px // 12) if clip.kind in {"subtitle", "coloured"} else 0
    draw.text((x - left, y - top), text, font=font, fill=(*colour, alpha), stroke_width=stroke,
              stroke_fill=(0, 0, 0, alpha))
    base = Image.fromarray(frame).convert("RGBA")
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"))


def render_clip(real: Path, clip: PrivacyClip) -> list[np.ndarray]:
    """The clip's RGB frames."""
    count = int(round(clip.seconds * FPS))
    frames = []
    for i, source in enumerate(_source_frames(real, clip.view, count)):
        if clip.extra == "bubbles":
            source = _bubbles(source, clip.motion_seed)
        elif clip.extra == "glints":
            source = _glints(source, clip.motion_seed)
        t = i / FPS
        frame = _drift(source, t, clip.motion_seed)
        if clip.kind and clip.shown_from <= t < clip.shown_from + clip.shown_s:
            frame = _draw_overlay(frame, clip, t)
        frames.append(frame)
    return frames


def write_privacy_clips(real: Path, out: Path, clips: list[PrivacyClip]) -> list[dict]:
    """Write `<name>.mp4` (H.264, 1-s GOPs, B-frames) and `<name>.srt` for every clip; returns their ground truth."""
    out.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        path = out / f"{clip.name}.mp4"
        if not path.is_file():
            with VideoWriter(path, FPS, *SIZE, crf=20, preset="veryfast", keyint=int(FPS)) as writer:
                for frame in render_clip(real, clip):
                    writer.write(frame)
        end = f"{clip.seconds:06.3f}".replace(".", ",")
        (out / f"{clip.name}.srt").write_text(f"1\n00:00:00,000 --> 00:00:{end}\n{NARRATION}\n")
    return [{**asdict(clip), "flagged": clip.flagged} for clip in clips]
