"""Phase annotations as one table of segments: Cataract-1K and OphNet 2024 files, refused rows with a reason each.

- Cataract-1K: per case `case_<id>_annotations_phases.csv` (`caseId`, `comment` = phase name, `frame`,
  `endFrame`, `sec`, `endSec`) with `case_<id>_video.csv` (`fps`) beside it; the video is `case_<id>`.
  Seconds must agree with frames / fps (to a frame); a row whose `caseId` is not its file's is refused.
- OphNet 2024: `OphNet2024_loca_*.csv` (`video_id`, `start`, `end` in seconds, `split`, `phase_id`); the
  phase is named by its id, the split column is kept, and a video is in one split only.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.tables import csv_text

CATARACT_SUFFIX = "_annotations_phases.csv"
OPHNET_PREFIX = "OphNet2024_loca_"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Segment:
    """One annotated phase of one video, in seconds."""

    video: str
    phase: str
    start: float
    end: float
    source: str  # file:line
    split: str = ""  # the annotation's own split (OphNet), else ""


@dataclass
class Annotations:
    """What the annotation files hold: accepted segments, refused rows (`source`, `video`, `reason`), the files."""

    segments: list[Segment] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def refuse(self, source: str, video: str, reason: str) -> None:
        self.refused.append({"source": source, "video": video, "reason": reason})


def _number(row: dict, column: str) -> float:
    value = float((row.get(column) or "").strip())
    if not math.isfinite(value):
        raise ValueError(column)
    return value


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(csv_text(path, "annotation file"))
    rows = list(reader)
    return [c.strip() for c in reader.fieldnames or []], rows


def _need(path: Path, columns: list[str], wanted: tuple[str, ...], what: str) -> None:
    absent = [c for c in wanted if c not in columns]
    if absent:
        raise InputError(f"{path} has no column {', '.join(map(repr, absent))}; a {what} file has "
                         f"{', '.join(map(repr, wanted))} (its columns are {', '.join(map(repr, columns)) or 'none'})")


def _case_fps(phases_csv: Path) -> float | None:
    """The fps of the case's `_video.csv` beside its phase file (None when absent or unusable)."""
    video_csv = phases_csv.with_name(phases_csv.name.removesuffix(CATARACT_SUFFIX) + "_video.csv")
    if not video_csv.is_file():
        return None
    _, rows = _rows(video_csv)
    try:
        fps = _number(rows[0], "fps")
    except (IndexError, ValueError):
        return None
    return fps if fps > 0 else None


def read_cataract1k(path: Path, out: Annotations) -> None:
    """Add the segments of one Cataract-1K `*_annotations_phases.csv` to `out`."""
    columns, rows = _rows(path)
    _need(path, columns, ("caseId", "comment", "frame", "endFrame", "sec", "endSec"), "Cataract-1K phase")
    case = path.name.removesuffix(CATARACT_SUFFIX)
    fps = _case_fps(path)
    out.files.append(path)
    for line, row in enumerate(rows, start=2):
        source = f"{path}:{line}"
        phase = (row.get("comment") or "").strip()
        try:
            first, last, start, end = (_number(row, c) for c in ("frame", "endFrame", "sec", "endSec"))
        except ValueError:
            out.refuse(source, case, "frame, endFrame, sec and endSec must be numbers")
            continue
        if f"case_{(row.get('caseId') or '').strip()}" != case:
            out.refuse(source, case, f"caseId {row.get('caseId')!r} is not the file's case {case}")
        elif not phase:
            out.refuse(source, case, "no phase name (column comment)")
        elif end <= start or last <= first or start < 0:
            out.refuse(source, case, f"segment {start:g}-{end:g} s (frames {first:g}-{last:g}) is empty or negative")
        elif fps is None:
            out.refuse(source, case, f"no usable fps in {case}_video.csv beside it to check the seconds")
        elif abs(start - first / fps) > 1.5 / fps or abs(end - last / fps) > 1.5 / fps:
            out.refuse(source, case, f"seconds {start:g}-{end:g} disagree with frames {first:g}-{last:g} at {fps:g} fps")
        else:
            out.segments.append(Segment(case, phase, start, end, source))


def read_ophnet(path: Path, out: Annotations) -> None:
    """Add the segments of one OphNet 2024 `OphNet2024_loca_*.csv` to `out`."""
    columns, rows = _rows(path)
    _need(path, columns, ("video_id", "start", "end", "split", "phase_id"), "OphNet 2024 localisation")
    out.files.append(path)
    split_of: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        source = f"{path}:{line}"
        video = (row.get("video_id") or "").strip()
        phase = (row.get("phase_id") or "").strip()
        split = (row.get("split") or "").strip().lower()
        try:
            start, end = _number(row, "start"), _number(row, "end")
        except ValueError:
            out.refuse(source, video, "start and end must be numbers (seconds)")
            continue
        if not video or not phase:
            out.refuse(source, video, "empty video_id or phase_id")
        elif end <= start or start < 0:
            out.refuse(source, video, f"segment {start:g}-{end:g} s is empty or negative")
        elif split not in SPLITS:
            out.refuse(source, video, f"split {split!r} is not one of {', '.join(SPLITS)}")
        elif split_of.setdefault(video, (split, line))[0] != split:
            first, first_line = split_of[video]
            out.refuse(source, video, f"split {split!r}, but line {first_line} puts {video} in {first!r} "
                                      "(a video is in one split only)")
        else:
            out.segments.append(Segment(video, phase, start, end, source, split))


def find_annotation_files(spec: Path) -> list[Path]:
    """The annotation files `spec` names: the file itself, or those found under the folder."""
    if spec.is_file():
        return [spec]
    if not spec.is_dir():
        raise InputError(f"--annotations {spec}: no such file or folder")
    cataract = sorted(spec.rglob(f"*{CATARACT_SUFFIX}"))
    ophnet = sorted(spec.rglob(f"{OPHNET_PREFIX}*.csv"))
    if len(ophnet) > 1:
        raise InputError(f"--annotations {spec} holds {len(ophnet)} OphNet files ({', '.join(p.name for p in ophnet)}), "
                         "which list the same segments; pass the one to use")
    if not cataract and not ophnet:
        raise InputError(f"--annotations {spec}: no Cataract-1K *{CATARACT_SUFFIX} or OphNet {OPHNET_PREFIX}*.csv "
                         "found (looked recursively)")
    return cataract + ophnet


def read_annotations(specs: list[Path]) -> Annotations:
    """Every segment of the annotation files or folders `specs`, with refused rows and the files read."""
    out = Annotations()
    for spec in specs:
        for path in find_annotation_files(Path(spec)):
            if path.name.endswith(CATARACT_SUFFIX):
                read_cataract1k(path, out)
            elif path.name.startswith(OPHNET_PREFIX):
                read_ophnet(path, out)
            else:
                raise InputError(f"--annotations {path}: not a Cataract-1K *{CATARACT_SUFFIX} or an OphNet "
                                 f"{OPHNET_PREFIX}*.csv file")
    if not out.segments:
        raise InputError(f"--annotations: no usable segment in {len(out.files)} file(s) "
                         f"({len(out.refused)} rows refused, e.g. {out.refused[0]['reason']})" if out.refused else
                         "--annotations: the files hold no segment")
    return out


def summary(segments: list[Segment]) -> dict:
    """Cases, segments and seconds per phase."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for s in segments:
        seconds[s.phase] += s.end - s.start
        counts[s.phase] += 1
    return {"videos": len({s.video for s in segments}), "segments": len(segments),
            "phases": {p: {"segments": counts[p], "seconds": round(seconds[p], 3)} for p in sorted(counts)}}
