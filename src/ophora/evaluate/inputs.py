"""What `--real`, `--generated` and `--train-set` name, as a list of videos with their prompts and phases.

Accepted: a folder of videos (searched recursively); `ophora sample`'s output folder or its `manifest.csv`
(columns `clip id`, `prompt`, `path`); an Ophora-160K-layout dataset folder or its CSV (`clip id`,
`instruction`, videos in `clips/<clip id>.mp4`). A manifest's optional `phase` column names each video's
phase; otherwise sample's clip ids name it (`capsulorhexis_1` -> `capsulorhexis`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ophora.core.dataset import TEXT_COLUMN, read_pairs
from ophora.core.errors import InputError
from ophora.core.media import probe_video
from ophora.core.tables import ID_COLUMN, read_id_text_rows, read_text_file

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
DATASET_CSVS = ("instructions.csv", "privacy_preserved.csv", "clips.csv")


@dataclass(frozen=True)
class Video:
    """One video to evaluate."""

    id: str
    path: Path
    prompt: str = ""
    phase: str = ""


def phase_of(clip_id: str) -> str:
    """The phase a sample clip id names: `capsulorhexis_1` -> `capsulorhexis` ("" for an empty id)."""
    return re.sub(r"_\d+$", "", clip_id.strip()).strip()


def _columns(path: Path) -> list[str]:
    reader = csv.reader(read_text_file(path, "CSV").splitlines())
    return next(reader, [])


def _phases(path: Path) -> dict[str, str]:
    """clip id -> the `phase` column, where the CSV has one."""
    rows = csv.DictReader(read_text_file(path, "CSV").splitlines())
    if "phase" not in (rows.fieldnames or []):
        return {}
    return {(r.get(ID_COLUMN) or "").strip(): (r.get("phase") or "").strip() for r in rows}


def _read_manifest(path: Path) -> list[Video]:
    """`ophora sample`'s manifest.csv: one row per video, `path` relative to the manifest's folder."""
    rows = list(csv.DictReader(read_text_file(path, "manifest").splitlines()))
    columns = list(rows[0].keys()) if rows else _columns(path)
    absent = [c for c in (ID_COLUMN, "prompt", "path") if c not in columns]
    if absent:
        raise InputError(f"{path} has no column {', '.join(repr(c) for c in absent)}; a sample manifest has "
                         f"'clip id', 'prompt' and 'path' (its columns are {', '.join(map(repr, columns)) or 'none'})")
    videos = []
    for line, row in enumerate(rows, start=2):
        rel = (row["path"] or "").strip()
        if not rel:
            raise InputError(f"{path} line {line}: empty path")
        clip_id = (row[ID_COLUMN] or "").strip()
        name = f"{clip_id}/{row.get('n', '').strip()}".rstrip("/") or rel
        phase = (row.get("phase") or "").strip() or phase_of(clip_id)
        videos.append(Video(name, (path.parent / rel), (row["prompt"] or "").strip(), phase))
    return videos


def _read_dataset(folder: Path, csv_path: Path) -> list[Video]:
    phases = _phases(csv_path)
    return [Video(p.clip_id, p.path, p.instruction, phases.get(p.clip_id, ""))
            for p in read_pairs(folder, str(csv_path))]


def _is_manifest(path: Path) -> bool:
    columns = _columns(path)
    return "path" in columns and "prompt" in columns


def read_videos(spec: str | Path, flag: str) -> list[Video]:
    """The videos `spec` names (see the module's docstring); `flag` names the option in errors."""
    spec = Path(spec)
    if spec.is_file():
        if spec.suffix.lower() != ".csv":
            if spec.suffix.lower() in VIDEO_EXTENSIONS:
                return [Video(spec.stem, spec)]
            raise InputError(f"{flag} {spec}: not a folder, a CSV or a video")
        if _is_manifest(spec):
            return _read_manifest(spec)
        # a dataset CSV: the columns are checked (one line naming what the file has)
        read_id_text_rows(spec, ID_COLUMN, TEXT_COLUMN, "CSV", hint="; a dataset CSV has 'clip id' and "
                          "'instruction' (videos in clips/), a sample manifest 'clip id', 'prompt' and 'path'")
        return _read_dataset(spec.parent, spec)
    if not spec.is_dir():
        raise InputError(f"{flag} {spec}: no such folder or file")
    if (spec / "manifest.csv").is_file() and _is_manifest(spec / "manifest.csv"):
        return _read_manifest(spec / "manifest.csv")
    if (spec / "clips").is_dir():
        for name in DATASET_CSVS:
            if (spec / name).is_file():
                return _read_dataset(spec, spec / name)
    found = sorted(p for p in spec.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(spec).parts))
    if not found:
        raise InputError(f"{flag} {spec}: no videos found (looked recursively for "
                         f"{', '.join(VIDEO_EXTENSIONS)})")
    return [Video(str(p.relative_to(spec).with_suffix("")), p, "", phase_of(p.parent.name) if p.parent != spec else "")
            for p in found]


def check_videos(videos: list[Video], flag: str, min_frames: int = 0) -> dict[str, int]:
    """Open every video's container (a one-line MediaError for one that cannot be read) and check its length.

    Returns each video's frame count as the container states it (0 where it does not say).
    """
    counts = {}
    for video in videos:
        if not video.path.is_file():
            raise InputError(f"{flag}: video {video.path} not found")
        info = probe_video(video.path)
        counts[video.id] = info.frames
        if min_frames and 0 < info.frames < min_frames:
            raise InputError(short_message(video.path, info.frames, min_frames))
    return counts


def short_message(path: Path, frames: int, needed: int) -> str:
    return (f"{path} has {frames} frames; FVD needs {needed} consecutive frames per video (pass a smaller "
            f"--frames, or leave fvd out of --metrics)")
