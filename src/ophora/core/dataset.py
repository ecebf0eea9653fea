"""Read a dataset in the Ophora-160K layout: `clips/<clip id>.mp4` and a CSV `clip id,instruction`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.tables import ID_COLUMN, read_id_text_rows

TEXT_COLUMN = "instruction"


@dataclass(frozen=True)
class Pair:
    """One video-instruction pair."""

    clip_id: str
    instruction: str
    path: Path


def read_csv_pairs(csv_path: Path) -> list[tuple[str, str]]:
    """(clip id, instruction) rows of an Ophora-160K CSV, checked for bad and duplicate ids."""
    return [(clip_id, text) for _, clip_id, text in read_id_text_rows(csv_path, ID_COLUMN, TEXT_COLUMN, "CSV")]


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
