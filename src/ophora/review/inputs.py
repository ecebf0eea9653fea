"""The videos of a study: `ophora sample`'s manifest (generated) and a folder of real videos.

Every video becomes a `Source`: where it is, whether it is generated or real, and what the rater is told
(the intended phase and instruction). Clip ids such as `capsulorhexis_1` name the phase: the id without its
trailing `_<number>`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.manifests import phase_of
from ophora.core.tables import ID_COLUMN, csv_text, read_id_text_rows

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
MANIFEST_COLUMNS = (ID_COLUMN, "n", "prompt", "path")  # the columns of sample's manifest.csv that review reads


@dataclass(frozen=True)
class Source:
    path: Path  # the original file (never shown to a rater)
    kind: str  # "generated" or "real"
    clip_id: str
    phase: str
    instruction: str
    n: int = 0


def read_generated(samples: Path) -> list[Source]:
    """Every video listed in `samples/manifest.csv` (written by `ophora sample`)."""
    manifest = samples / "manifest.csv"
    rows = list(csv.DictReader(csv_text(manifest, "sample manifest (written by 'ophora sample')")))
    if not rows:
        raise InputError(f"{manifest} lists no videos")
    absent = [c for c in MANIFEST_COLUMNS if c not in rows[0]]
    if absent:
        raise InputError(f"{manifest} has no column {', '.join(map(repr, absent))}; is it a manifest of 'ophora sample'?")
    sources, lines = [], {}
    for line, row in enumerate(rows, start=2):
        path = samples / (row["path"] or "")
        if not row["path"] or not path.is_file():
            raise InputError(f"{manifest} line {line}: video {row['path']!r} not found under {samples}")
        if path.resolve() in lines:
            raise InputError(f"{manifest} lines {lines[path.resolve()]} and {line} both list {row['path']!r}; "
                             "list each video once")
        lines[path.resolve()] = line
        clip_id = (row[ID_COLUMN] or "").strip()
        try:
            n = int(row["n"] or 0)
        except ValueError:
            raise InputError(f"{manifest} line {line}: n is {row['n']!r}, not a number") from None
        sources.append(Source(path.resolve(), "generated", clip_id, phase_of(clip_id), (row["prompt"] or "").strip(), n))
    return sources


def read_real(folder: Path, phases: set[str]) -> list[Source]:
    """Real videos: an Ophora-160K dataset (`clips/<clip id>.mp4` + `instructions.csv`) or any folder of videos.

    The phase shown for a real video is its `phase` column in instructions.csv where there is one, else the
    phase its clip id (file stem) names when that is one of the generated videos' `phases`, else none.
    """
    if not folder.is_dir():
        raise InputError(f"real-video folder not found: {folder}")
    instructions_csv, clips = folder / "instructions.csv", folder / "clips"
    if instructions_csv.is_file() and clips.is_dir():
        texts = {key: text for _, key, text in read_id_text_rows(instructions_csv, ID_COLUMN, "instruction",
                                                                    "Ophora-160K instruction list")}
        listed = {r[ID_COLUMN].strip(): (r.get("phase") or "").strip()
                  for r in csv.DictReader(csv_text(instructions_csv, "instruction list"))}
        sources = []
        for clip_id, text in texts.items():
            path = next((clips / f"{clip_id}{s}" for s in VIDEO_SUFFIXES if (clips / f"{clip_id}{s}").is_file()), None)
            if path is None:
                raise InputError(f"{instructions_csv} lists {clip_id!r} but {clips} has no video of that name")
            phase = listed.get(clip_id) or (phase_of(clip_id) if phase_of(clip_id) in phases else "")
            sources.append(Source(path.resolve(), "real", clip_id, phase, text))
        return sources
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise InputError(f"{folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}) and no Ophora-160K dataset")
    return [Source(p.resolve(), "real", p.stem, phase_of(p.stem) if phase_of(p.stem) in phases else "", "")
            for p in paths]
