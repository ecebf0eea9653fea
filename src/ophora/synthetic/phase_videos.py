"""The synthetic surgery renderer: each Cataract-1K phase drawn with its own visible signature.

Every phase has a `Signature` over the drifting eye of `narrated_videos.EyeScene`: an instrument (shape,
colour, count), the path its tip follows, the colour of the lens seen through the pupil (natural, stained
blue, brown nucleus, white cortex, clear, an implanted lens) and a cue of its own (the wound, a gel, the
tear of the capsule, a fluid wave, nucleus fragments, bubbles, ...). The signatures differ in several of
these at once, so a small video network tells the phases apart at 32x32 and a small text-to-video model
has something to learn for each. Between two phases the lens fades from one look to the next without
instruments. Videos start at a seeded moment of the scene's drift, so the time in a video tells nothing
of its phase, and every phase's motion is periodic (its look does not depend on when it happens).

    make_phase_cases(out, {"case_1": ["Incision", "Capsulorhexis"], ...})
        -> out/videos/case_1.mp4, out/annotations/case_1/case_1_annotations_phases.csv (+ _video.csv),
           the Cataract-1K layout, with a short unannotated gap between phases
    make_generated_phase_videos(out, {"Capsulorhexis": 3})
        -> out/capsulorhexis/0.mp4 ... and out/manifest.csv, the layout `ophora sample` writes

`surgery_world.make_surgery_world` builds narrated source videos for curation on the same renderer.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ophora.core.media import VideoWriter
from ophora.core.seeds import derived_seed
from ophora.core.tables import slug
from ophora.synthetic.narrated_videos import EyeScene

# The twelve phases of Cataract-1K in surgical order, spelled as in its annotation files ("Pulishing" sic).
CATARACT1K_PHASES = ("Incision", "Viscoelastic", "Capsulorhexis", "Hydrodissection", "Phacoemulsification",
                     "Irrigation/Aspiration", "Capsule Pulishing", "Lens Implantation", "Lens positioning",
                     "Viscoelastic_Suction", "Anterior_Chamber Flushing", "Tonifying/Antibiotics")
PHASES = ("Incision", "Capsulorhexis", "Phacoemulsification", "Lens Implantation")  # the downstream tests' four
GAP_SECONDS = 0.5  # unannotated time between two phases, as in real annotations
Span = tuple[float, float, str]  # start, end (seconds), phase
RGB = tuple[int, int, int]

# Instrument shapes: shaft width (share of the frame's short side) and what is drawn at the tip.
INSTRUMENTS = {"blade": 1 / 14, "cannula": 1 / 18, "cystotome": 1 / 18, "phaco": 1 / 8, "chopper": 1 / 16,
               "ia": 1 / 11, "polisher": 1 / 13, "injector": 1 / 6, "hook": 1 / 18, "syringe": 1 / 13}
PATHS = ("stab", "sweep", "circle", "hold", "orbit", "zigzag", "push", "arc", "figure8")
CUES = ("wound", "gel", "rhexis", "wave", "fragments", "streaks", "sparkle", "iol_folded", "iol_turning",
        "gel_fading", "bubbles", "droplets")
_NATURAL, _STAINED, _NUCLEUS, _CORTEX, _CLEAR = (200, 160, 95), (70, 110, 215), (150, 95, 35), (232, 230, 212), \
    (215, 75, 45)


@dataclass(frozen=True)
class Signature:
    """What makes a phase recognisable: instrument, tip path, lens look and a cue of its own."""

    instrument: str  # a key of INSTRUMENTS
    colour: RGB  # the instrument's colour
    count: int  # instruments (a second one enters from the opposite side; phaco's second is a chopper)
    path: str  # one of PATHS
    speed: float  # radians per second along the path
    entry: float  # angle (radians, image coordinates) at which the first instrument enters the eye
    lens: RGB  # colour of the lens seen through the pupil
    iol: bool  # an implanted lens is in place
    cue: str  # one of CUES


SIGNATURES: dict[str, Signature] = {
    "Incision": Signature("blade", (238, 238, 242), 1, "stab", 2.2, -0.5, _NATURAL, False, "wound"),
    "Viscoelastic": Signature("cannula", (70, 170, 255), 1, "sweep", 0.9, -2.4, _NATURAL, False, "gel"),
    "Capsulorhexis": Signature("cystotome", (60, 220, 80), 1, "circle", 1.6, -0.3, _STAINED, False, "rhexis"),
    "Hydrodissection": Signature("cannula", (255, 150, 30), 1, "hold", 3.0, 0.4, (215, 190, 120), False, "wave"),
    "Phacoemulsification": Signature("phaco", (230, 50, 50), 2, "sweep", 2.6, -0.2, _NUCLEUS, False, "fragments"),
    "Irrigation/Aspiration": Signature("ia", (150, 70, 235), 2, "orbit", 1.2, 0.8, _CORTEX, False, "streaks"),
    "Capsule Pulishing": Signature("polisher", (250, 230, 40), 1, "zigzag", 3.5, -2.8, _CLEAR, False, "sparkle"),
    "Lens Implantation": Signature("injector", (30, 200, 190), 1, "push", 1.0, -0.4, _CLEAR, False, "iol_folded"),
    "Lens positioning": Signature("hook", (240, 80, 200), 2, "arc", 1.4, 2.6, _CLEAR, True, "iol_turning"),
    "Viscoelastic_Suction": Signature("ia", (50, 70, 235), 1, "figure8", 2.0, -1.2, _CLEAR, True, "gel_fading"),
    "Anterior_Chamber Flushing": Signature("cannula", (150, 255, 200), 1, "stab", 1.8, 2.2, _CLEAR, True, "bubbles"),
    "Tonifying/Antibiotics": Signature("syringe", (45, 45, 50), 1, "hold", 0.7, -0.6, _CLEAR, True, "droplets"),
}
_COLOURS = tuple(s.colour for s in SIGNATURES.values())
_LENSES = (_NATURAL, _STAINED, _NUCLEUS, _CORTEX, _CLEAR)


def signature(phase: str) -> Signature:
    """The signature of `phase`; a phase outside Cataract-1K gets one made from its name (the same every time)."""
    if phase in SIGNATURES:
        return SIGNATURES[phase]
    pick = [derived_seed("phase", phase, part) for part in range(8)]
    return Signature(list(INSTRUMENTS)[pick[0] % len(INSTRUMENTS)], _COLOURS[pick[1] % len(_COLOURS)],
                     1 + pick[2] % 2, PATHS[pick[3] % len(PATHS)], 0.8 + pick[4] % 25 / 10,
                     pick[5] % 628 / 100, _LENSES[pick[6] % len(_LENSES)], False, CUES[pick[7] % len(CUES)])


# ---------------------------------------------------------------------------------------------- drawing


def _bgr(rgb: RGB) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _blend(frame: np.ndarray, draw: Callable[[np.ndarray], None], alpha: float) -> None:
    """Draw onto a copy of `frame` and mix it in with opacity `alpha` (in place)."""
    layer = frame.copy()
    draw(layer)
    cv2.addWeighted(layer, alpha, frame, 1 - alpha, 0, dst=frame)


def _tip(sig: Signature, k: int, t: float, c: tuple[float, float], p: float) -> tuple[float, float]:
    """Where instrument k's tip is at time t, for the eye centre `c` and pupil radius `p`."""
    u = sig.speed * t + k * math.pi
    entry = sig.entry + k * math.pi
    ex, ey = c[0] + 1.9 * p * math.cos(entry), c[1] + 1.9 * p * math.sin(entry)  # the wound at the limbus
    across = (-math.sin(entry), math.cos(entry))
    if sig.path == "stab":
        f = 0.15 + 0.25 * (0.5 + 0.5 * math.sin(u))
        return ex + (c[0] - ex) * f, ey + (c[1] - ey) * f
    if sig.path == "push":
        f = 0.3 + 0.45 * (0.5 + 0.5 * math.sin(u))
        return ex + (c[0] - ex) * f, ey + (c[1] - ey) * f
    if sig.path == "sweep":
        s = 0.75 * p * math.sin(u)
        return c[0] + s * across[0] + 0.2 * p * math.cos(entry), c[1] + s * across[1] + 0.2 * p * math.sin(entry)
    if sig.path == "circle":
        return c[0] + 0.75 * p * math.cos(u), c[1] + 0.75 * p * math.sin(u)
    if sig.path == "orbit":
        return c[0] + 0.5 * p * math.cos(u), c[1] + 0.35 * p * math.sin(u)
    if sig.path == "hold":
        return (c[0] + 0.85 * p * math.cos(entry) + 0.1 * p * math.sin(3 * u),
                c[1] + 0.85 * p * math.sin(entry) + 0.1 * p * math.cos(2 * u))
    if sig.path == "zigzag":
        return c[0] + 0.6 * p * math.sin(u), c[1] + 0.3 * p * math.sin(5 * u)
    if sig.path == "arc":
        a = entry + math.pi + 0.7 * math.sin(u)
        return c[0] + 0.85 * p * math.cos(a), c[1] + 0.85 * p * math.sin(a)
    return c[0] + 0.6 * p * math.sin(u), c[1] + 0.35 * p * math.sin(2 * u)  # figure8


def _instrument(frame: np.ndarray, shape: str, colour: RGB, tip: tuple[float, float], entry: tuple[float, float],
                size: int) -> None:
    """A shaft from beyond the frame through the wound `entry` to `tip`, and the shape's head at the tip."""
    dx, dy = entry[0] - tip[0], entry[1] - tip[1]
    norm = math.hypot(dx, dy) or 1.0
    d = (dx / norm, dy / norm)  # from the tip back along the shaft
    n = (-d[1], d[0])
    width = max(2, round(size * INSTRUMENTS[shape]))
    tail = (tip[0] + 3 * size * d[0], tip[1] + 3 * size * d[1])
    bgr, dark = _bgr(colour), tuple(int(v * 0.55) for v in _bgr(colour))
    cv2.line(frame, _pt(*tail), _pt(*tip), bgr, width, cv2.LINE_AA)
    head = size / 10
    if shape == "blade":
        points = [tip, (tip[0] + 2 * head * d[0] + head * n[0], tip[1] + 2 * head * d[1] + head * n[1]),
                  (tip[0] + 2 * head * d[0] - head * n[0], tip[1] + 2 * head * d[1] - head * n[1])]
        cv2.fillConvexPoly(frame, np.int32([_pt(*q) for q in points]), bgr, cv2.LINE_AA)
    elif shape == "cystotome":  # a bent needle tip
        cv2.line(frame, _pt(*tip), _pt(tip[0] + head * n[0], tip[1] + head * n[1]), bgr, width, cv2.LINE_AA)
    elif shape == "hook":
        cv2.ellipse(frame, _pt(tip[0] + 0.5 * head * n[0], tip[1] + 0.5 * head * n[1]), (int(head / 2) + 1,) * 2,
                    math.degrees(math.atan2(n[1], n[0])), 0, 180, bgr, max(1, width - 1), cv2.LINE_AA)
    elif shape == "phaco":  # a silicone sleeve band behind a round tip
        band = (tip[0] + 1.5 * head * d[0], tip[1] + 1.5 * head * d[1])
        cv2.line(frame, _pt(*band), _pt(band[0] + head * d[0], band[1] + head * d[1]), dark, width + 2, cv2.LINE_AA)
        cv2.circle(frame, _pt(*tip), width // 2 + 1, bgr, -1, cv2.LINE_AA)
    elif shape == "chopper":
        cv2.line(frame, _pt(*tip), _pt(tip[0] - head * n[0], tip[1] - head * n[1]), bgr, width, cv2.LINE_AA)
    elif shape == "ia":  # a round tip with a dark port
        cv2.circle(frame, _pt(*tip), width // 2 + 1, bgr, -1, cv2.LINE_AA)
        cv2.circle(frame, _pt(*tip), max(1, width // 4), dark, -1, cv2.LINE_AA)
    elif shape == "polisher":  # a rough square pad
        r = int(head * 0.8) + 1
        cv2.rectangle(frame, _pt(tip[0] - r, tip[1] - r), _pt(tip[0] + r, tip[1] + r), bgr, -1)
        cv2.rectangle(frame, _pt(tip[0] - r, tip[1] - r), _pt(tip[0] + r, tip[1] + r), dark, 1)
    elif shape == "injector":  # a wide cartridge with a flat dark mouth
        cv2.line(frame, _pt(tip[0] + 0.5 * width * n[0], tip[1] + 0.5 * width * n[1]),
                 _pt(tip[0] - 0.5 * width * n[0], tip[1] - 0.5 * width * n[1]), dark, max(2, width // 4))
    elif shape == "syringe":  # a thin needle ahead of the dark barrel
        cv2.line(frame, _pt(*tip), _pt(tip[0] - 1.5 * head * d[0], tip[1] - 1.5 * head * d[1]), (235, 235, 235),
                 max(1, width // 3), cv2.LINE_AA)
    else:  # cannula: a small ball at the tip
        cv2.circle(frame, _pt(*tip), width // 2 + 1, bgr, -1, cv2.LINE_AA)


def _iol(frame: np.ndarray, c: tuple[float, float], p: float, angle: float, squeeze: float = 1.0) -> None:
    """An intraocular lens: a clear optic with a bright rim and two C-shaped haptics, turned by `angle`."""
    rim = max(1, int(p / 12))
    axes = (int(0.62 * p), max(1, int(0.62 * p * squeeze)))
    deg = math.degrees(angle)
    cv2.ellipse(frame, _pt(*c), axes, deg, 0, 360, (200, 215, 225), -1, cv2.LINE_AA)
    cv2.ellipse(frame, _pt(*c), axes, deg, 0, 360, (250, 250, 250), rim, cv2.LINE_AA)
    for side in (0, math.pi):
        a = angle + side
        hx, hy = c[0] + 0.95 * p * math.cos(a + 0.5), c[1] + 0.95 * p * squeeze * math.sin(a + 0.5)
        cv2.ellipse(frame, _pt(hx, hy), (int(0.55 * p), max(1, int(0.55 * p * squeeze))), math.degrees(a),
                    90, 230, (120, 220, 250), rim + 1, cv2.LINE_AA)


def _lens(frame: np.ndarray, c: tuple[float, float], p: float, colour: RGB, iol: bool) -> None:
    _blend(frame, lambda f: cv2.circle(f, _pt(*c), int(p), _bgr(colour), -1, cv2.LINE_AA), 0.85)
    if iol:
        _iol(frame, c, p, 0.4)


def _cue(frame: np.ndarray, sig: Signature, t: float, c: tuple[float, float], p: float,
         tips: list[tuple[float, float]], size: int) -> None:
    """The phase's own cue (drawn after the lens, before the instruments)."""
    u = sig.speed * t
    thin = max(1, size // 60)
    if sig.cue == "wound":
        a = math.degrees(sig.entry)
        cv2.ellipse(frame, _pt(*c), (int(1.9 * p),) * 2, 0, a - 14, a + 14, (40, 30, 150), max(2, size // 36),
                    cv2.LINE_AA)
    elif sig.cue in ("gel", "gel_fading"):
        r = p * (0.55 + 0.3 * math.sin(1.5 * t)) if sig.cue == "gel" else p * (0.3 + 0.5 * ((0.6 * t) % 1.0))
        _blend(frame, lambda f: cv2.circle(f, _pt(*tips[0]), int(r), (255, 230, 170), -1, cv2.LINE_AA), 0.5)
    elif sig.cue == "rhexis":  # the torn capsule edge, following the needle round
        end = math.degrees(u) % 360
        cv2.ellipse(frame, _pt(*c), (int(0.75 * p),) * 2, 0, 0, max(end, 20), (250, 250, 250), thin + 1, cv2.LINE_AA)
    elif sig.cue == "wave":  # a fluid wave spreading under the capsule
        r = p * (0.2 + 0.8 * ((0.8 * t) % 1.0))
        cv2.circle(frame, _pt(*c), int(r), (60, 215, 255), max(2, size // 40), cv2.LINE_AA)
    elif sig.cue == "fragments":  # a groove across the nucleus and pieces dancing at the tip
        for a in (0.3, 0.3 + math.pi / 2):
            cv2.line(frame, _pt(c[0] - 0.8 * p * math.cos(a), c[1] - 0.8 * p * math.sin(a)),
                     _pt(c[0] + 0.8 * p * math.cos(a), c[1] + 0.8 * p * math.sin(a)), (20, 55, 90), thin + 1)
        for j in range(6):
            q = (tips[0][0] + 0.35 * p * math.cos(2.3 * j + 7 * t), tips[0][1] + 0.35 * p * math.sin(1.7 * j + 5 * t))
            cv2.circle(frame, _pt(*q), max(1, size // 45), (120, 225, 250), -1, cv2.LINE_AA)
    elif sig.cue == "streaks":  # cortex strands drawn towards the aspiration ports
        for j in range(5):
            a = 2 * math.pi * j / 5 + 0.3 * t
            cv2.line(frame, _pt(c[0] + p * math.cos(a), c[1] + p * math.sin(a)), _pt(*tips[j % len(tips)]),
                     (245, 245, 240), thin, cv2.LINE_AA)
    elif sig.cue == "sparkle":  # glints of the polished capsule flickering
        for j in range(8):
            if math.sin(11 * t + 2.7 * j) > 0.2:
                a, r = 2.4 * j, p * (0.3 + 0.08 * j)
                cv2.circle(frame, _pt(c[0] + r * math.cos(a), c[1] + r * math.sin(a)), max(1, size // 50),
                           (255, 255, 255), -1, cv2.LINE_AA)
    elif sig.cue == "iol_folded":  # the lens unfolding out of the injector
        _iol(frame, ((c[0] + tips[0][0]) / 2, (c[1] + tips[0][1]) / 2), p, sig.entry,
             0.3 + 0.5 * (0.5 + 0.5 * math.sin(u)))
    elif sig.cue == "iol_turning":  # the hook dials the lens round
        _iol(frame, c, p, 0.4 + 0.6 * math.sin(u))
    elif sig.cue == "bubbles":  # air bubbles washed across the chamber
        for j in range(7):
            x = c[0] + p * (((0.5 * t + j / 7) % 1.0) * 2.6 - 1.3)
            y = c[1] + 0.8 * p * math.sin(1.9 * j)
            cv2.circle(frame, _pt(x, y), max(2, size // 30) + j % 3, (255, 255, 255), thin, cv2.LINE_AA)
    elif sig.cue == "droplets":  # the wound swells white with fluid, drops run off
        w = _pt(c[0] + 1.9 * p * math.cos(sig.entry), c[1] + 1.9 * p * math.sin(sig.entry))
        _blend(frame, lambda f: cv2.circle(f, w, int(0.45 * p), (250, 250, 250), -1, cv2.LINE_AA),
               0.5 + 0.3 * math.sin(2 * t))
        for j in range(3):
            y = w[1] + 0.9 * p * ((0.7 * t + j / 3) % 1.0)
            cv2.circle(frame, _pt(w[0] + 0.3 * p * (j - 1), y), max(1, size // 45), (255, 255, 255), -1, cv2.LINE_AA)


def render_phase(scene: EyeScene, phase: str, t: float) -> np.ndarray:
    """The RGB frame of `phase` at `t` seconds of the scene's drift."""
    frame, c = scene.view(t)
    p, size = scene.pupil_radius, min(scene.width, scene.height)
    sig = signature(phase)
    _lens(frame, c, p, sig.lens, sig.iol)
    tips = [_tip(sig, k, t, c, p) for k in range(sig.count)]
    _cue(frame, sig, t, c, p, tips, size)
    for k, tip in enumerate(tips):
        entry = sig.entry + k * math.pi
        wound = (c[0] + 1.9 * p * math.cos(entry), c[1] + 1.9 * p * math.sin(entry))
        shape = "chopper" if k and sig.instrument == "phaco" else sig.instrument
        _instrument(frame, shape, sig.colour, tip, wound, size)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def render_between(scene: EyeScene, before: str, after: str, mix: float, t: float) -> np.ndarray:
    """The RGB frame at `t` between two phases (either may be ""): no instruments, the lens fading from one to the other."""
    frame, c = scene.view(t)
    p = scene.pupil_radius
    looks = [signature(ph) for ph in (before, after) if ph]
    if looks:
        a, b = looks[0], looks[-1]
        w = mix if len(looks) == 2 else 0.0
        colour = tuple(round((1 - w) * x + w * y) for x, y in zip(a.lens, b.lens))
        _lens(frame, c, p, colour, a.iol and b.iol)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def render_timeline(scene: EyeScene, spans: Sequence[Span], t: float, offset: float = 0.0) -> np.ndarray:
    """The RGB frame at `t` seconds of a video whose phases are `spans` (sorted); `offset` shifts the drift."""
    for start, end, phase in spans:
        if start <= t < end and phase:
            return render_phase(scene, phase, offset + t)
    before = [(e, ph) for _, e, ph in spans if e <= t and ph]
    after = [(s, ph) for s, _, ph in spans if s > t and ph]
    b_end, b_phase = before[-1] if before else (0.0, "")
    a_start, a_phase = after[0] if after else (t, "")
    mix = (t - b_end) / (a_start - b_end) if a_start > b_end else 0.0
    return render_between(scene, b_phase, a_phase, mix, offset + t)


def drift_offset(seed: int) -> float:
    """Where in the scene's drift a video starts (seconds), from its seed."""
    return derived_seed(seed, "offset") % 6000 / 100


def write_phase_video(path: Path, size: tuple[int, int], fps: float, spans: Sequence[Span], seed: int,
                      duration: float | None = None,
                      decorate: Callable[[np.ndarray, float], None] | None = None, keyint: int | None = None) -> Path:
    """Render and encode a video of `spans` on a scene made from `seed`; `decorate(frame, t)` may draw on frames."""
    scene, offset = EyeScene(*size, seed=seed), drift_offset(seed)
    duration = spans[-1][1] if duration is None else duration
    with VideoWriter(path, fps, *size, crf=20, preset="veryfast", keyint=keyint) as writer:
        for i in range(round(duration * fps)):
            frame = render_timeline(scene, spans, i / fps, offset)
            if decorate is not None:
                decorate(frame, i / fps)
            writer.write(frame)
    return path


def phase_sheet(path: str | Path, size: tuple[int, int] = (192, 128), columns: int = 4, seed: int = 0) -> Path:
    """One labelled frame of each Cataract-1K phase, as the world renders it, in a grid image at `path` (PNG)."""
    tiles = []
    for k, phase in enumerate(SIGNATURES):
        frame = cv2.cvtColor(render_phase(EyeScene(*size, seed=seed + k), phase, 1.0 + 0.37 * k), cv2.COLOR_RGB2BGR)
        label = np.full((22, size[0], 3), 255, np.uint8)
        cv2.putText(label, phase, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1, cv2.LINE_AA)
        tiles.append(np.vstack([frame, label]))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise OSError(f"cannot write {path}")
    return path


def write_cataract1k_annotations(folder: Path, case: str, spans: Sequence[Span], fps: float) -> None:
    """`<case>_annotations_phases.csv` and `<case>_video.csv` in `folder`, as Cataract-1K writes them.

    Frames are the first and last frame inside a span (endFrame inclusive); seconds are those frames' times.
    """
    number = case.removeprefix("case_")
    rows = []
    for start, end, phase in spans:
        first, last = round(start * fps), round(end * fps) - 1
        rows.append([number, phase, first, last, round(first / fps, 3), round(last / fps, 3)])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{case}_annotations_phases.csv", "w", newline="") as f:
        csv.writer(f).writerows([["caseId", "comment", "frame", "endFrame", "sec", "endSec"], *rows])
    with open(folder / f"{case}_video.csv", "w", newline="") as f:
        csv.writer(f).writerows([["caseId", "physician", "done", "date", "fps"],
                                 [number, "synthetic", 1, "2024-01-01 00:00:00", f"{fps:.3f}"]])


def make_phase_cases(out: str | Path, cases: dict[str, list[str]], seconds: float = 2.0, fps: float = 8.0,
                     size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """Annotated surgeries in the Cataract-1K layout (see the module docstring); returns `out`.

    Case ids are `case_<n>`; each case shows its phases in order, `seconds` each, `GAP_SECONDS` apart.
    """
    out = Path(out)
    for case, case_phases in cases.items():
        spans, t = [], 0.0
        for phase in case_phases:
            t += GAP_SECONDS
            spans.append((t, t + seconds, phase))
            t += seconds
        (out / "videos").mkdir(parents=True, exist_ok=True)
        write_phase_video(out / "videos" / f"{case}.mp4", size, fps, spans, derived_seed(seed, case) % 10_000,
                          duration=t + GAP_SECONDS)
        write_cataract1k_annotations(out / "annotations" / case, case, spans, fps)
    return out


def colour_signature(frames: np.ndarray) -> np.ndarray:
    """Share of the pixels in each of 64 coarse RGB cells: the phases differ by instrument and lens colour."""
    q = np.asarray(frames).reshape(-1, 3) // 64
    counts = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
    return counts / counts.sum()


def colour_phase_classifier(width: int = 192, height: int = 128) -> Callable[[np.ndarray], str]:
    """A phase classifier in seconds: nearest centroid over colour signatures, fitted on the world's own renders
    of each phase (6 eyes x 3 times); it takes RGB frames (..., 3) and returns a phase name."""
    centroids = np.stack([colour_signature(np.stack([render_phase(EyeScene(width, height, seed=s), phase, t)
                                                     for s in range(6) for t in (0.5, 1.5, 2.5)]))
                          for phase in CATARACT1K_PHASES])
    return lambda frames: CATARACT1K_PHASES[int(np.abs(centroids - colour_signature(frames)).sum(1).argmin())]


def make_generated_phase_videos(out: str | Path, counts: dict[str, int], seconds: float = 2.0, fps: float = 8.0,
                                size: tuple[int, int] = (96, 72), seed: int = 1) -> Path:
    """Videos of single phases in `ophora sample`'s layout, clip ids naming the phase; returns `out`."""
    out = Path(out)
    rows = []
    for phase, count in counts.items():
        clip_id = slug(phase) + "_1"
        for n in range(count):
            (out / clip_id).mkdir(parents=True, exist_ok=True)
            write_phase_video(out / clip_id / f"{n}.mp4", size, fps, [(0.0, seconds, phase)],
                              derived_seed(seed, clip_id, n) % 10_000)
            rows.append([clip_id, n, f"the {phase.lower()} phase of cataract surgery", f"{clip_id}/{n}.mp4"])
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["clip id", "n", "prompt", "path"], *rows])
    return out
