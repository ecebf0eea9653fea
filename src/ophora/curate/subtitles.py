"""Timed narration from sidecar files: SubRip (.srt), WebVTT (.vtt, incl. rolling auto-captions), Whisper JSON.

Every reader returns clean cues: sorted by start, text stripped of markup, empty cues dropped, each cue
ending no later than the next one starts (overlaps are cut, not merged), times never negative.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import MediaError

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".srt", ".vtt", ".json")
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_ARROW = re.compile(rf"({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_TAG = re.compile(r"<[^>]*>")
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")  # SSA/ASS override blocks such as {\an8} or {\i1}, kept in many SRTs
_ASS_BREAK = re.compile(r"\\[Nnh]")  # SSA/ASS line breaks and hard spaces
_CUE_NUMBER = re.compile(r"\s*\d+\s*")


@dataclass(frozen=True)
class Cue:
    """One timed piece of narration (seconds)."""

    start: float
    end: float
    text: str


def decode_text(data: bytes) -> str:
    """Bytes -> text: UTF-8 (with or without BOM), else UTF-16 with BOM, else Latin-1; newlines normalised."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _seconds(match: re.Match, offset: int = 0) -> float:
    h, m, s, frac = (match.group(offset + i) for i in range(1, 5))
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000


def _clean(text: str) -> str:
    """Narration text without HTML-like tags, SSA/ASS override blocks and line breaks, entities decoded."""
    text = _ASS_BREAK.sub(" ", _ASS_OVERRIDE.sub("", _TAG.sub("", text)))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _timed_blocks(text: str) -> list[tuple[float, float, list[str]]]:
    """(start, end, text lines) of every cue: the lines after an `a --> b` line up to the first empty one.

    Whitespace-only lines do not end a cue (auto-captions use them as blank caption rows); lines between
    an empty line and the next timing line (SRT numbers, VTT cue ids and notes) are ignored, and so is a cue
    number right above a timing line when a file leaves out the empty line between cues.
    """
    blocks: list[tuple[float, float, list[str]]] = []
    open_cue = False
    for line in text.split("\n"):
        match = _ARROW.search(line)
        if match:
            if open_cue and blocks[-1][2] and _CUE_NUMBER.fullmatch(blocks[-1][2][-1]):
                blocks[-1][2].pop()
            blocks.append((_seconds(match, 1), _seconds(match, 6), []))
            open_cue = True
        elif line == "":
            open_cue = False
        elif open_cue:
            blocks[-1][2].append(line)
    return blocks


def parse_srt(text: str) -> list[Cue]:
    """SubRip cues (numbering optional, `,` or `.` before milliseconds, markup removed)."""
    return normalize_cues([Cue(s, e, _clean(" ".join(lines))) for s, e, lines in _timed_blocks(text)])


def parse_vtt(text: str) -> list[Cue]:
    """WebVTT cues; rolling auto-captions (each cue repeating the previous line) keep each line once."""
    cues: list[Cue] = []
    recent: list[str] = []
    for start, end, lines in _timed_blocks(text):
        fresh = []
        for line in (_clean(x) for x in lines):
            if line and line not in recent:
                fresh.append(line)
                recent = (recent + [line])[-3:]
        if fresh:
            cues.append(Cue(start, end, " ".join(fresh)))
        elif cues and lines:
            # A cue that only repeats earlier lines keeps them on screen: extend the cue that said them.
            cues[-1] = Cue(cues[-1].start, max(cues[-1].end, end), cues[-1].text)
    return normalize_cues(cues)


def parse_whisper_json(text: str, name: str = "transcript") -> list[Cue]:
    """Whisper-style transcript: `{"segments": [{"start", "end", "text"}, ...]}` or a bare list of those.

    A segment without finite numeric start/end or without text (`"text": null`) is skipped with a warning naming
    `name` (the sidecar file) and the segments; the others are kept.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise MediaError(f"{name} is not valid JSON: {detail}") from None
    segments = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(segments, list):
        raise MediaError(f"{name} has no `segments` list")
    parsed = [_segment_cue(seg) for seg in segments]
    skipped = [n for n, cue in enumerate(parsed, 1) if cue is None]
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d of %d segments without numeric start/end and text (number %s)", name,
                    len(skipped), len(segments), shown)
    return normalize_cues([cue for cue in parsed if cue is not None])


def _segment_cue(seg) -> Cue | None:
    """The cue of one Whisper segment, or None when it has no finite start/end or no text."""
    if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
        return None
    try:
        start, end = float(seg["start"]), float(seg["end"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if isinstance(seg["start"], bool) or isinstance(seg["end"], bool) or not (math.isfinite(start) and math.isfinite(end)):
        return None
    return Cue(start, end, _clean(seg["text"]))


def normalize_cues(cues: list[Cue]) -> list[Cue]:
    """Sort, drop empty or zero-length cues, clamp negatives, and cut each overlap at the next start."""
    kept = sorted((c for c in cues if c.text and c.end > c.start and c.end > 0), key=lambda c: (c.start, c.end))
    out: list[Cue] = []
    for i, cue in enumerate(kept):
        end = min(cue.end, kept[i + 1].start) if i + 1 < len(kept) and kept[i + 1].start > cue.start else cue.end
        out.append(Cue(max(cue.start, 0.0), end, cue.text))
    return out


def read_subtitles(path: str | Path) -> list[Cue]:
    """The cues of a .srt, .vtt or .json sidecar file."""
    path = Path(path)
    try:
        text = decode_text(path.read_bytes())
    except OSError as exc:
        raise MediaError(f"cannot read subtitles {path}: {exc}") from None
    parser = {".srt": parse_srt, ".vtt": parse_vtt, ".json": lambda t: parse_whisper_json(t, str(path))}.get(
        path.suffix.lower())
    if parser is None:
        raise MediaError(f"unknown subtitle format {path.suffix!r} for {path}; use .srt, .vtt or .json")
    return parser(text)


def find_sidecar(video: str | Path) -> Path | None:
    """The narration file beside `video`: `stem.srt|vtt|json`, else a language-tagged `stem.<lang>.srt|vtt`."""
    video = Path(video)
    for suffix in SIDECAR_SUFFIXES:
        candidate = video.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    tagged = sorted(p for p in video.parent.glob(f"{glob_escape(video.stem)}.*.*")
                    if p.suffix.lower() in (".srt", ".vtt") and p.stem.rsplit(".", 1)[0] == video.stem)
    english = [p for p in tagged if p.stem.rsplit(".", 1)[1].lower().startswith("en")]
    return (english or tagged or [None])[0]


def glob_escape(name: str) -> str:
    """`name` with glob wildcards escaped."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)
