"""Atomic file writes: write under a temporary sibling name, then rename, so no reader sees half a file."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A hidden sibling name for writing `path` atomically; it never ends in the final name."""
    return path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically (creating its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON atomically; paths and other objects become strings."""
    return write_text(path, json.dumps(data, indent=1, default=str))


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[dict] | Sequence[Sequence]) -> Path:
    """Write a CSV with a header atomically; rows are dicts (keys beyond `columns` ignored) or sequences."""
    buffer = io.StringIO()
    if rows and isinstance(rows[0], dict):
        writer = csv.DictWriter(buffer, list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
    else:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
