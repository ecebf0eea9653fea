"""Synthetic surgeries with known phases, for `ophora downstream`: real-layout annotations and sample-layout videos.

Every phase has its own look (instrument colour, count and motion) over the drifting eye of
`narrated_videos.EyeScene`, so a small video network can learn to tell the phases apart in seconds:

    make_phase_cases(out, {"case_1": ["Incision", "Capsulorhexis"], ...})
        -> out/videos/case_1.mp4, out/annotations/case_1/case_1_annotations_phases.csv (+ _video.csv),
           the Cataract-1K layout, with a short unannotated gap between phases
    make_generated_phase_videos(out, {"Capsulorhexis": 3})
        -> out/capsulorhexis/0.mp4 ... and out/manifest.csv, the layout `ophora sample` writes
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import cv2
import numpy as np

from ophora.core.media import VideoWriter
from ophora.core.seeds import derived_seed
from ophora.synthetic.narrated_videos import EyeScene

PHASES = ("Incision", "Capsulorhexis", "Phacoemulsification", "Lens Implantation")  # spelled as in Cataract-1K
_COLOURS = ((230, 60, 60), (60, 220, 80), (70, 90, 240), (235, 220, 50), (220, 70, 220), (60, 220, 230))
GAP_SECONDS = 0.5  # unannotated time between two phases, as in real annotations


def phase_look(phase: str, phases: tuple[str, ...] = PHASES) -> tuple[tuple[int, int, int], int, float]:
    """(instrument RGB colour, number of instruments, angular speed) of a phase."""
    k = phases.index(phase) if phase in phases else derived_seed("phase", phase) % len(_COLOURS)
    return _COLOURS[k % len(_COLOURS)], 1 + k % 3, 0.8 + 1.1 * k


def render_phase(scene: EyeScene, phase: str, t: float, phases: tuple[str, ...] = PHASES) -> np.ndarray:
    """The RGB frame at `t` seconds of `phase` (None for an idle frame between phases)."""
    frame = scene.frame(t)
    h, w = frame.shape[:2]
    if phase:
        colour, count, speed = phase_look(phase, phases)
        for i in range(count):
            angle = speed * t + i * math.pi
            tip = (int(w / 2 + 0.25 * w * math.cos(angle)), int(h / 2 + 0.25 * h * math.sin(angle)))
            tail = (int(w / 2 + 0.9 * w * math.cos(angle)), int(h / 2 + 0.9 * h * math.sin(angle)))
            cv2.line(frame, tail, tip, colour[::-1], max(3, w // 12), cv2.LINE_AA)
            cv2.circle(frame, tip, max(3, w // 10), colour[::-1], -1, cv2.LINE_AA)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _write(path: Path, scene: EyeScene, spans: list[tuple[float, float, str]], fps: float,
           size: tuple[int, int], phases: tuple[str, ...], seed: int) -> None:
    """Renders `spans` from a seeded moment of the scene's drift, so the time in a video tells nothing of its phase."""
    duration, offset = spans[-1][1], derived_seed(seed, "offset") % 6000 / 100
    with VideoWriter(path, fps, *size, crf=20, preset="veryfast") as writer:
        for i in range(int(round(duration * fps))):
            t = i / fps
            phase = next((p for a, b, p in spans if a <= t < b), "")
            writer.write(render_phase(scene, phase, offset + t, phases))


def make_phase_cases(out: str | Path, cases: dict[str, list[str]], seconds: float = 2.0, fps: float = 8.0,
                     size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """Annotated surgeries in the Cataract-1K layout (see the module docstring); returns `out`.

    Case ids are `case_<n>`; each case shows its phases in order, `seconds` each, `GAP_SECONDS` apart.
    """
    out = Path(out)
    phases = tuple(dict.fromkeys([*PHASES, *(p for ps in cases.values() for p in ps)]))
    for case, case_phases in cases.items():
        number = case.removeprefix("case_")
        spans, rows, t = [], [], 0.0
        for phase in case_phases:
            t += GAP_SECONDS
            spans.append((t, t + seconds, phase))
            first, last = round(t * fps), round((t + seconds) * fps) - 1
            rows.append([number, phase, first, last, round(first / fps, 3), round(last / fps, 3)])
            t += seconds
        spans.append((t, t + GAP_SECONDS, ""))
        scene_seed = derived_seed(seed, case) % 10_000
        (out / "videos").mkdir(parents=True, exist_ok=True)
        _write(out / "videos" / f"{case}.mp4", EyeScene(*size, seed=scene_seed), spans, fps, size, phases, scene_seed)
        folder = out / "annotations" / case
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{case}_annotations_phases.csv", "w", newline="") as f:
            csv.writer(f).writerows([["caseId", "comment", "frame", "endFrame", "sec", "endSec"], *rows])
        with open(folder / f"{case}_video.csv", "w", newline="") as f:
            csv.writer(f).writerows([["caseId", "physician", "done", "date", "fps"],
                                     [number, "synthetic", 1, "2024-01-01 00:00:00", f"{fps:.3f}"]])
    return out


def make_generated_phase_videos(out: str | Path, counts: dict[str, int], seconds: float = 2.0, fps: float = 8.0,
                                size: tuple[int, int] = (96, 72), seed: int = 1) -> Path:
    """Videos of single phases in `ophora sample`'s layout, clip ids naming the phase; returns `out`."""
    out = Path(out)
    phases = tuple(dict.fromkeys([*PHASES, *counts]))
    rows = []
    for phase, count in counts.items():
        clip_id = re.sub(r"[^a-z0-9]+", "_", phase.lower()).strip("_") + "_1"
        for n in range(count):
            scene_seed = derived_seed(seed, clip_id, n) % 10_000
            (out / clip_id).mkdir(parents=True, exist_ok=True)
            _write(out / clip_id / f"{n}.mp4", EyeScene(*size, seed=scene_seed), [(0.0, seconds, phase)], fps, size,
                   phases, scene_seed)
            rows.append([clip_id, n, f"the {phase.lower()} phase of cataract surgery", f"{clip_id}/{n}.mp4"])
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["clip id", "n", "prompt", "path"], *rows])
    return out
