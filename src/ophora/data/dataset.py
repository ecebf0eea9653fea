"""Read a dataset in the Ophora-160K layout: `clips/<clip id>.mp4` and a CSV `clip id,instruction`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ophora.errors import InputError

ID_COLUMN = "clip id"
TEXT_COLUMN = "instruction"


@dataclass(frozen=True)
class Pair:
    """One video-instruction pair."""

    clip_id: str
    instruction: str
    path: Path


def read_csv_pairs(csv_path: Path) -> list[tuple[str, str]]:
    """(clip id, instruction) rows of an Ophora-160K CSV, checked for empty and duplicate ids."""
    if not csv_path.is_file():
        raise InputError(f"CSV not found: {csv_path}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{csv_path} is not UTF-8 text") from None
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    absent = [c for c in (ID_COLUMN, TEXT_COLUMN) if c not in columns]
    if absent:
        raise InputError(f"{csv_path} has no column {', '.join(repr(c) for c in absent)}; "
                         f"its columns are {', '.join(repr(c) for c in columns) or 'none'}")
    rows, seen = [], {}
    for line, row in enumerate(reader, start=2):
        clip_id, text = (row[ID_COLUMN] or "").strip(), (row[TEXT_COLUMN] or "").strip()
        if not clip_id or "/" in clip_id or "\\" in clip_id or clip_id in (".", ".."):
            raise InputError(f"{csv_path} line {line}: bad clip id {clip_id!r}")
        if clip_id in seen:
            raise InputError(f"{csv_path}: duplicate clip id {clip_id!r} on lines {seen[clip_id]} and {line}")
        seen[clip_id] = line
        rows.append((clip_id, text))
    return rows


def read_pairs(dataset: str | Path, csv_name: str = "instructions.csv") -> list[Pair]:
    """The pairs listed in `dataset/<csv_name>` (a path of its own also works), in CSV order."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise InputError(f"dataset folder not found: {dataset}")
    csv_path = Path(csv_name) if Path(csv_name).is_absolute() else dataset / csv_name
    rows = read_csv_pairs(csv_path)
    if not rows:
        raise InputError(f"{csv_path} lists no clips")
    return [Pair(clip_id, text, dataset / "clips" / f"{clip_id}.mp4") for clip_id, text in rows]
