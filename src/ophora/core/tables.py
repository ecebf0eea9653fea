"""Reading the project's id/text CSV files (prompt files, Ophora-160K instruction lists) with clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

from ophora.core.errors import InputError

ID_COLUMN = "clip id"  # the id column of every project CSV (prompt files, Ophora-160K lists, manifests)


def csv_row(record: dict) -> dict:
    """A record as a CSV row: the code's `clip_id` key becomes the files' "clip id" column."""
    return {ID_COLUMN if k == "clip_id" else k: v for k, v in record.items()}


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of `path` (a BOM is dropped), or an InputError naming `what` is missing or unreadable."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text") from None


def read_id_text_rows(path: Path, id_column: str, text_column: str, what: str, hint: str = "") -> list[tuple[int, str, str]]:
    """(line, id, text) for every row of a CSV with an id and a text column.

    Checks that both columns exist (naming the columns the file has, then `hint`), that every id can be a
    file or folder name, and that no id repeats. Texts are stripped and may be empty: callers decide.
    """
    reader = csv.DictReader(read_text_file(path, what).splitlines())
    columns = reader.fieldnames or []
    absent = [c for c in (id_column, text_column) if c not in columns]
    if absent:
        raise InputError(f"{path} has no column {', '.join(repr(c) for c in absent)}; its columns are "
                         f"{', '.join(repr(c) for c in columns) or 'none'}{hint}")
    rows, seen = [], {}
    for line, row in enumerate(reader, start=2):
        key, text = (row[id_column] or "").strip(), (row[text_column] or "").strip()
        if not key:
            raise InputError(f"{path} line {line}: empty {id_column}")
        if "/" in key or "\\" in key or key in (".", ".."):
            raise InputError(f"{path} line {line}: {id_column} {key!r} cannot be a file or folder name")
        if key in seen:
            raise InputError(f"{path}: duplicate {id_column} {key!r} on lines {seen[key]} and {line}")
        seen[key] = line
        rows.append((line, key, text))
    return rows
