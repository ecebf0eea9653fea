"""`ophora make-surgery-world`: a procedural world of narrated cataract surgeries with known phases and overlays.

Each source video is one surgery going through a run of consecutive Cataract-1K phases (in surgical order;
runs are chosen so every phase is shown about equally often), drawn by the one phase renderer of
`phase_videos` (each phase its own instrument, tip path, lens colour and cue), with one narration per phase
span in a surgeon's words (several templates per phase naming the action and the instrument). A known share
of the videos (`overlay_share`) carries a burned-in caption (a made-up surgeon, patient or clinic line in bold
on a dark backing box) or a channel bug in a top corner (a logo and a made-up channel name on a dark plate)
over all their phases but the first or the last, as narrated surgery uploads do (`overlays.BOXED`,
`overlays.draw_watermark`: shapes coarse enough to survive the mini experiment's small autoencoder).

    make_surgery_world(out, videos=12, size=(192, 128), fps=8.0, overlay_share=0.3, seed=0)
        -> out/videos/case_<n>.mp4 and case_<n>.srt (or .en.vtt / .json: `sidecar`), what `ophora curate` reads
           out/annotations/case_<n>/case_<n>_annotations_phases.csv (+ _video.csv), the Cataract-1K layout
           `ophora downstream --annotations out/annotations --videos out/videos` reads
           out/ground_truth.json: per video its phase spans (start, end, phase, narration, overlay) and overlays
           (kind, start, end, box [x0, y0, x1, y1) in pixels, text: the caption or channel name, corner)

Times: spans start and end on frame boundaries and fill [start, end); phases are `GAP_SECONDS` apart (no
instrument there, the lens fading to the next look), with a gap before the first and after the last. An
overlay covers whole phase spans, from half a gap before its first span to half a gap after its last, so a
curated clip (one per narration) either shows it throughout or not at all. The annotation rows hold the
first and the last frame inside a span, as Cataract-1K's do, so they read back as [start, end - 1/fps].

Curate settings the world needs: `ophora curate OUT/videos --min-width W --min-height H` with W x H the world's
size (at most): curate drops sources below 720x480 by default (reason `resolution`). The defaults of the
rest fit: each narration ends a sentence and lasts `seconds` (3-6 s), inside curate's --min-seconds (2) and
--max-seconds (10), so every phase span becomes one clip. The ground truth names these flags
(`curate_flags`). Captions are legible from 192x128 up (bold capitals about 11 pixels high there: a text
line's detector box stays under the 15% of the frame's height that curate's text filter allows).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ophora.core.config import option
from ophora.core.errors import ConfigError
from ophora.core.files import write_json
from ophora.core.seeds import derived_seed
from ophora.synthetic.narrated_videos import NarratedVideo, Segment, write_sidecar
from ophora.synthetic.overlays import (BOXED, CORNERS, caption_box, caption_fits, draw_caption, draw_watermark,
                                       watermark_box)
from ophora.synthetic.phase_videos import (CATARACT1K_PHASES, GAP_SECONDS, write_cataract1k_annotations,
                                           write_phase_video)

log = logging.getLogger(__name__)

SIDECARS = ("srt", "vtt", "json")
OVERLAY_KINDS = ("caption", "watermark")

# One narration per phase span: a template and its {slots}, drawn at random (several wordings per phase).
NARRATIONS: dict[str, tuple[str, ...]] = {
    "Incision": (
        "Now we make the main incision at the temporal limbus with the {blade}.",
        "I enter the anterior chamber through a clear corneal incision with the {blade}.",
        "The {blade} cuts a biplanar tunnel into the cornea at the limbus.",
        "We start with the main wound, pushing the {blade} into the peripheral cornea."),
    "Viscoelastic": (
        "Viscoelastic is injected through the cannula to fill the anterior chamber.",
        "Now I fill the chamber with {ovd}, sweeping the cannula across the lens.",
        "We inject {ovd} with a blunt cannula to protect the endothelium.",
        "The cannula spreads {ovd} over the anterior capsule."),
    "Capsulorhexis": (
        "The capsulorhexis is made with the {needle} in a circular motion.",
        "I tear the stained anterior capsule round in a circle with the {needle}.",
        "Trypan blue stains the capsule while the {needle} completes the capsulorhexis.",
        "We guide the capsular flap around the centre of the lens with the {needle}."),
    "Hydrodissection": (
        "Hydrodissection is performed with a cannula under the edge of the anterior capsule.",
        "Balanced salt solution is injected under the capsule and a fluid wave passes behind the nucleus.",
        "I inject fluid with the {hydro} to free the nucleus from the cortex.",
        "We hold the {hydro} at the rhexis edge and watch the fluid wave spread."),
    "Phacoemulsification": (
        "Phacoemulsification of the nucleus begins with the phaco tip and the {chopper}.",
        "I sculpt a groove in the nucleus and crack it with the {chopper}.",
        "The phaco handpiece emulsifies the nuclear fragments while the {chopper} feeds them to the tip.",
        "We chop the brown nucleus into quadrants and emulsify each piece with the phaco tip."),
    "Irrigation/Aspiration": (
        "The remaining cortex is aspirated with the irrigation aspiration handpiece.",
        "Bimanual irrigation and aspiration removes the cortical strands from the capsular bag.",
        "I strip the white cortex from the bag with the {ia} tips.",
        "We clean the cortex off the capsule with the aspiration port of the {ia} handpiece."),
    "Capsule Pulishing": (
        "The posterior capsule is polished with the {polisher} to remove residual lens cells.",
        "I gently polish the capsule with the {polisher}, moving it back and forth.",
        "We vacuum the posterior capsule clean with the {polisher}.",
        "Now we polish the capsule with light strokes of the {polisher}."),
    "Lens Implantation": (
        "The intraocular lens is injected into the capsular bag with the {injector}.",
        "I inject the folded lens through the cartridge and it unfolds in the bag.",
        "The {injector} delivers the foldable lens into the capsular bag.",
        "We push the lens slowly out of the {injector} so that it unfolds."),
    "Lens positioning": (
        "The lens haptics are dialed into position with the {hook}.",
        "I rotate the lens in the bag with the {hook} and center the optic.",
        "We center the intraocular lens by turning it with the {hook}.",
        "The {hook} dials the second haptic under the capsule edge."),
    "Viscoelastic_Suction": (
        "The viscoelastic is removed from behind the lens with the aspiration tip.",
        "I aspirate the remaining viscoelastic under the optic with the {ia} tip.",
        "We suction the viscoelastic out of the anterior chamber and from behind the lens.",
        "The irrigation aspiration tip cleans the viscoelastic out of the bag."),
    "Anterior_Chamber Flushing": (
        "The anterior chamber is flushed with balanced salt solution through the cannula.",
        "I rinse the chamber with the cannula and wash out the air bubbles.",
        "We irrigate the anterior chamber with the cannula to clear the remaining bubbles.",
        "Balanced salt solution from the cannula flushes the chamber clean."),
    "Tonifying/Antibiotics": (
        "The wound is hydrated with the cannula to seal the incision.",
        "I inject intracameral antibiotic through the side port with a {syringe}.",
        "We hydrate the corneal incision until it is watertight and inject cefuroxime into the chamber.",
        "Stromal hydration seals the incision, then the {syringe} gives the antibiotic."),
}
SLOTS = {
    "blade": ("keratome", "slit knife", "2.2 mm keratome", "diamond blade"),
    "ovd": ("viscoelastic", "dispersive viscoelastic", "cohesive viscoelastic", "the OVD"),
    "needle": ("cystotome", "bent needle", "capsulorhexis forceps"),
    "hydro": ("hydrodissection cannula", "blunt cannula", "cannula"),
    "chopper": ("chopper", "second instrument", "phaco chopper"),
    "ia": ("irrigation aspiration", "bimanual", "I/A"),
    "polisher": ("capsule polisher", "polishing cannula", "polisher"),
    "injector": ("injector", "lens injector", "cartridge injector"),
    "hook": ("Sinskey hook", "lens hook", "hook"),
    "syringe": ("syringe", "cannula", "fine cannula"),
}
_SURNAMES = ("Weber", "Novak", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Rossi", "Kowal", "Haddad", "Brandt")
_CLINICS = ("Nord", "Sued", "Ost", "Riverside", "Lakeview", "St. Anna", "Central")
_CHANNELS = ("EyeTV", "LENS", "OPH", "IOL")  # made-up channel names of the watermarks (short: a compact bug)


@dataclass
class PhaseSpan:
    """A stretch [start, end) of one phase and the narration spoken over it."""

    start: float
    end: float
    phase: str
    narration: str
    overlay: str = ""  # the kind of overlay shown over the whole span, "" for none


@dataclass
class Overlay:
    """A burned-in overlay shown in [start, end) at `box` (x0, y0, x1, y1: the pixels it may change)."""

    kind: str  # caption or watermark
    start: float
    end: float
    box: tuple[int, int, int, int]
    text: str = ""  # captions: the made-up line shown; watermarks: the channel name
    corner: str = ""  # watermarks: top_right or top_left


@dataclass
class SurgeryVideo:
    """One planned source video: its phases with their narrations, its overlays, and the seed of its scene."""

    stem: str
    seed: int
    duration: float
    spans: list[PhaseSpan] = field(default_factory=list)
    overlays: list[Overlay] = field(default_factory=list)

    def overlays_at(self, t: float) -> list[Overlay]:
        """The overlays shown at `t` seconds."""
        return [o for o in self.overlays if o.start <= t < o.end]


@dataclass
class SurgeryWorldConfig:
    """`ophora make-surgery-world` settings (see `make_surgery_world`)."""

    dir: Path = option(help="folder to write videos/, annotations/ and ground_truth.json into", positional=True)
    videos: int = option(12, "source videos (surgeries)")
    width: int = option(192, "frame width (even)")
    height: int = option(128, "frame height (even)")
    fps: float = option(8.0, "frames per second")
    overlay_share: float = option(0.3, "share of videos with a burned-in caption or corner watermark")
    seed: int = option(0, "seed of the whole world")
    min_phases: int = option(3, "fewest phases of one surgery")
    max_phases: int = option(6, "most phases of one surgery")
    min_seconds: float = option(3.0, "shortest phase span")
    max_seconds: float = option(6.0, "longest phase span")
    sidecar: str = option("srt", "narration sidecar format", choices=SIDECARS)


def _check(videos: int, size: tuple[int, int], fps: float, overlay_share: float, phases_per_video: tuple[int, int],
           seconds: tuple[float, float], sidecar: str) -> None:
    width, height = size
    if videos < 1:
        raise ConfigError(f"videos must be at least 1, got {videos}")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ConfigError(f"size must be even and at least 64x64, got {width}x{height}")
    if fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    if not 0 <= overlay_share <= 1:
        raise ConfigError(f"overlay_share must be between 0 and 1, got {overlay_share}")
    if not 1 <= phases_per_video[0] <= phases_per_video[1] <= len(CATARACT1K_PHASES):
        raise ConfigError(f"phases per video must satisfy 1 <= min <= max <= {len(CATARACT1K_PHASES)}, "
                          f"got {phases_per_video[0]}-{phases_per_video[1]}")
    if not 0 < seconds[0] <= seconds[1]:
        raise ConfigError(f"phase seconds must satisfy 0 < min <= max, got {seconds[0]}-{seconds[1]}")
    if sidecar not in SIDECARS:
        raise ConfigError(f"sidecar must be one of {', '.join(SIDECARS)}, got {sidecar!r}")
    if sidecar == "vtt" and seconds[0] < 3.0:  # write_sidecar rolls each cue in two 2.5 s halves
        raise ConfigError(f"vtt sidecars need phase spans of at least 3 s, got {seconds[0]}")


def narration(phase: str, rng: np.random.Generator) -> str:
    """A surgeon's sentence about `phase`: one of its templates with its slots filled at random."""
    template = NARRATIONS[phase][rng.integers(len(NARRATIONS[phase]))]
    return template.format(**{k: v[rng.integers(len(v))] for k, v in SLOTS.items()})


def _caption_text(rng: np.random.Generator, width: int, height: int) -> str:
    """A made-up caption line (surgeon, patient, clinic, date) that fits the frame's width."""
    day, month, year = rng.integers(1, 29), rng.integers(1, 13), rng.integers(15, 25)
    lines = (f"Dr. {_SURNAMES[rng.integers(len(_SURNAMES))]} {day:02d}.{month:02d}.{year:02d}",
             f"Patient {rng.integers(1000, 10000)}", f"Eye Clinic {_CLINICS[rng.integers(len(_CLINICS))]}",
             f"Case {rng.integers(100, 1000)} {day:02d}.{month:02d}.{year:02d}")
    fitting = [t for t in lines if caption_fits(width, height, t, BOXED)]
    return fitting[rng.integers(len(fitting))] if fitting else f"Dr. {_SURNAMES[0]}"


def _phase_runs(count: int, phases_per_video: tuple[int, int], rng: np.random.Generator) -> list[list[str]]:
    """`count` runs of consecutive phases; each starts where the phases it covers were shown least so far."""
    shown = np.zeros(len(CATARACT1K_PHASES))
    runs = []
    for _ in range(count):
        length = int(rng.integers(phases_per_video[0], phases_per_video[1] + 1))
        starts = np.arange(len(CATARACT1K_PHASES) - length + 1)
        load = np.array([shown[s:s + length].sum() for s in starts]) + rng.uniform(0, 0.5, len(starts))
        first = int(starts[np.argmin(load)])
        shown[first:first + length] += 1
        runs.append(list(CATARACT1K_PHASES[first:first + length]))
    return runs


def plan_world(videos: int = 12, size: tuple[int, int] = (192, 128), fps: float = 8.0, overlay_share: float = 0.3,
               seed: int = 0, phases_per_video: tuple[int, int] = (3, 6),
               seconds: tuple[float, float] = (3.0, 6.0)) -> list[SurgeryVideo]:
    """Every video's phases, narrations and overlays (nothing is rendered)."""
    rng = np.random.default_rng(derived_seed("surgery_world", seed))
    frame = 1.0 / fps

    def on_frame(t: float) -> float:  # span and overlay bounds fall on frame boundaries
        return round(t * fps) * frame

    plan = []
    for n, run in enumerate(_phase_runs(videos, phases_per_video, rng), start=1):
        stem, spans, t = f"case_{n}", [], 0.0
        for phase in run:
            start = on_frame(t + GAP_SECONDS)
            end = on_frame(start + rng.uniform(*seconds))
            spans.append(PhaseSpan(start, max(end, start + frame), phase, narration(phase, rng)))
            t = spans[-1].end
        plan.append(SurgeryVideo(stem, derived_seed(seed, stem) % 10_000, on_frame(t + GAP_SECONDS), spans))
    for video in (plan[i] for i in sorted(rng.choice(videos, round(overlay_share * videos), replace=False))):
        kind = OVERLAY_KINDS[rng.integers(len(OVERLAY_KINDS))]
        covered = max(1, len(video.spans) - 1)  # most of the video, never all of it (but of a one-phase video)
        first = int(rng.integers(len(video.spans) - covered + 1))  # from the second phase on, or to the last but one
        start = on_frame(video.spans[first].start - GAP_SECONDS / 2)
        end = on_frame(video.spans[first + covered - 1].end + GAP_SECONDS / 2)
        if kind == "caption":
            text = _caption_text(rng, *size)
            video.overlays.append(Overlay(kind, start, end, caption_box(*size, text, BOXED), text=text))
        else:
            corner, name = CORNERS[rng.integers(len(CORNERS))], _CHANNELS[rng.integers(len(_CHANNELS))]
            video.overlays.append(Overlay(kind, start, end, watermark_box(*size, corner, name), text=name,
                                          corner=corner))
        for span in video.spans[first:first + covered]:
            span.overlay = kind
    return plan


def draw_overlays(video: SurgeryVideo, frame: np.ndarray, t: float) -> None:
    """Burn the overlays shown at `t` into `frame` (in place)."""
    for overlay in video.overlays_at(t):
        if overlay.kind == "caption":
            draw_caption(frame, overlay.text, BOXED)
        else:
            draw_watermark(frame, overlay.corner, overlay.text)


def write_surgery(video: SurgeryVideo, out: Path, size: tuple[int, int], fps: float, sidecar: str = "srt",
                  overlays: bool = True) -> tuple[Path, Path]:
    """Render one surgery into out/videos (with its sidecar) and its annotations into out/annotations.

    Returns the video and sidecar paths; `overlays=False` renders the same surgery without its overlays.
    """
    folder = out / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    spans = [(s.start, s.end, s.phase) for s in video.spans]
    path = write_phase_video(folder / f"{video.stem}.mp4", size, fps, spans, video.seed, duration=video.duration,
                             decorate=(lambda frame, t: draw_overlays(video, frame, t)) if overlays else None,
                             keyint=max(1, round(fps)))
    narrated = NarratedVideo(video.stem, *size, sidecar, [Segment(s.start, s.end, s.narration) for s in video.spans])
    text = write_sidecar(narrated, folder)
    write_cataract1k_annotations(out / "annotations" / video.stem, video.stem, spans, fps)
    return path, text


def make_surgery_world(out: str | Path, videos: int = 12, size: tuple[int, int] = (192, 128), fps: float = 8.0,
                       overlay_share: float = 0.3, seed: int = 0, phases_per_video: tuple[int, int] = (3, 6),
                       seconds: tuple[float, float] = (3.0, 6.0), sidecar: str = "srt") -> Path:
    """Write the world (see the module docstring) into `out`; returns `out`. `size` is (width, height)."""
    _check(videos, size, fps, overlay_share, phases_per_video, seconds, sidecar)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_world(videos, size, fps, overlay_share, seed, phases_per_video, seconds)
    sidecars = {}
    for video in plan:
        sidecars[video.stem] = write_surgery(video, out, size, fps, sidecar)[1].relative_to(out).as_posix()
        log.info("wrote %s (%d phases, %.1f s, %d overlays)", video.stem, len(video.spans), video.duration,
                 len(video.overlays))
    width, height = size
    write_json(out / "ground_truth.json", {
        "phases": list(CATARACT1K_PHASES), "size": [width, height], "fps": fps, "seed": seed,
        "overlay_share": overlay_share, "overlay_videos": sum(bool(v.overlays) for v in plan),
        "curate_flags": ["--min-width", str(width), "--min-height", str(height)],
        "videos": {v.stem: {"video": f"videos/{v.stem}.mp4", "sidecar": sidecars[v.stem],
                            "annotations": f"annotations/{v.stem}/{v.stem}_annotations_phases.csv",
                            "seed": v.seed, "duration": v.duration, "frames": round(v.duration * fps),
                            "phases": [asdict(s) for s in v.spans], "overlays": [asdict(o) for o in v.overlays]}
                   for v in plan}})
    return out


def make_surgery_world_cli(config: SurgeryWorldConfig) -> Path:
    """`ophora make-surgery-world`: the config's flags -> `make_surgery_world`."""
    return make_surgery_world(config.dir, videos=config.videos, size=(config.width, config.height), fps=config.fps,
                              overlay_share=config.overlay_share, seed=config.seed,
                              phases_per_video=(config.min_phases, config.max_phases),
                              seconds=(config.min_seconds, config.max_seconds), sidecar=config.sidecar)
