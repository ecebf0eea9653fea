"""`ophora sample`'s manifest.csv as other stages read it: one video per row, with its prompt and phase.

Columns `clip id`, `prompt`, `path` (relative to the manifest's folder), optionally `n` and `phase`. Without a
`phase` column the clip id names the phase: `capsulorhexis_1` -> `capsulorhexis`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.tables import ID_COLUMN, csv_text

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class Video:
    """One video with what its listing says about it."""

    id: str
    path: Path
    prompt: str = ""
    phase: str = ""
    line: int = 0  # its row in the listing (0: not from a listing)


def phase_of(clip_id: str) -> str:
    """The phase a sample clip id names: `capsulorhexis_1` -> `capsulorhexis` ("" for an empty id)."""
    return re.sub(r"_\d+$", "", clip_id.strip()).strip()


def csv_columns(path: Path) -> list[str]:
    """The header of a CSV file (empty for an empty file)."""
    return next(csv.reader(csv_text(path, "CSV")), [])


def is_manifest(path: Path) -> bool:
    """Whether the CSV at `path` has a sample manifest's `path` and `prompt` columns."""
    columns = csv_columns(path)
    return "path" in columns and "prompt" in columns


def read_manifest(path: Path) -> list[Video]:
    """The videos of a sample manifest, in its order; a missing column or an empty path is an InputError."""
    rows = list(csv.DictReader(csv_text(path, "manifest")))
    columns = list(rows[0].keys()) if rows else csv_columns(path)
    absent = [c for c in (ID_COLUMN, "prompt", "path") if c not in columns]
    if absent:
        raise InputError(f"{path} has no column {', '.join(repr(c) for c in absent)}; a sample manifest has "
                         f"'clip id', 'prompt' and 'path' (its columns are {', '.join(map(repr, columns)) or 'none'})")
    videos, seen = [], {}
    for line, row in enumerate(rows, start=2):
        rel = (row["path"] or "").strip()
        if not rel:
            raise InputError(f"{path} line {line}: empty path")
        clip_id = (row[ID_COLUMN] or "").strip()
        name = f"{clip_id}/{(row.get('n') or '').strip()}".rstrip("/") or rel
        for what, key, shown in (("video", name, name), ("file", (path.parent / rel).resolve(), rel)):
            if (what, key) in seen:  # a video counted twice, or two videos under one name (their results would mix)
                raise InputError(f"{path} lines {seen[what, key]} and {line} list the same {what} {shown!r}; list each "
                                 "video once (an 'n' column tells videos of one clip id apart)")
            seen[what, key] = line
        phase = (row.get("phase") or "").strip() or phase_of(clip_id)
        videos.append(Video(name, path.parent / rel, (row["prompt"] or "").strip(), phase, line))
    return videos
