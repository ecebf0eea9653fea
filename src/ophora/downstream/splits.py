"""Train/val/test splits by video: every clip of a surgery is in its video's split, so none can leak.

The split is a mapping video -> split, decided once per video, from (first that applies) an explicit CSV
(`video`, `split`), the annotations' own split column (OphNet), or a seeded shuffle of the videos cut by
fractions. Clips only ever look their split up by their video.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ophora.core.errors import ConfigError, InputError
from ophora.core.seeds import derived_seed
from ophora.core.tables import csv_text
from ophora.downstream.annotations import SPLITS, Segment


def read_split_file(path: Path) -> dict[str, str]:
    """video -> split from a CSV with columns `video` and `split` (train, val or test)."""
    reader = csv.DictReader(csv_text(path, "--splits file"))
    columns = reader.fieldnames or []
    if "video" not in columns or "split" not in columns:
        raise InputError(f"--splits {path} needs columns 'video' and 'split' (its columns are "
                         f"{', '.join(map(repr, columns)) or 'none'})")
    splits: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        video, split = (row["video"] or "").strip(), (row["split"] or "").strip().lower()
        if split not in SPLITS:
            raise InputError(f"--splits {path} line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if splits.setdefault(video, split) != split:
            raise InputError(f"--splits {path} line {line}: {video} is listed in two splits")
    return splits


def seeded_splits(videos: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Videos shuffled by a seed derived from each id, cut into train/val/test by `fractions`.

    Test and train get at least one video each; a video keeps its split when others are added or removed
    only as far as the cut points allow (the order of the remaining videos does not change).
    """
    if len(videos) < 2:
        raise InputError(f"splitting by video needs at least 2 annotated videos, got {len(videos)}")
    order = sorted(videos, key=lambda v: (derived_seed(seed, "split", v), v))
    total = sum(fractions)
    n_test = max(1, round(len(order) * fractions[2] / total))
    n_val = min(round(len(order) * fractions[1] / total), len(order) - n_test - 1)
    cuts = {v: "test" for v in order[:n_test]} | {v: "val" for v in order[n_test:n_test + n_val]}
    return {v: cuts.get(v, "train") for v in order}


def assign_splits(segments: list[Segment], fractions: tuple[float, float, float], seed: int,
                  explicit: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """(video -> split, where it came from: "file", "annotations" or "seeded")."""
    videos = sorted({s.video for s in segments})
    if explicit:
        absent = [v for v in videos if v not in explicit]
        if absent:
            raise InputError(f"--splits names no split for {len(absent)} annotated video(s), e.g. {absent[0]}")
        return {v: explicit[v] for v in videos}, "file"
    annotated = {s.video: s.split for s in segments if s.split}
    if len(annotated) == len(videos):
        return annotated, "annotations"
    return seeded_splits(videos, fractions, seed), "seeded"


def check_fractions(fractions: list[float]) -> None:
    """Three non-negative fractions (train, val, test) with train and test above zero."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0 or fractions[2] <= 0:
        raise ConfigError(f"--split-fractions wants train,val,test like 0.7,0.1,0.2 (train and test above 0), "
                          f"got {','.join(map(str, fractions))}")
