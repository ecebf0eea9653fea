"""Reading the project's id/text CSV files (prompt files, Ophora-160K instruction lists) with clear errors."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.files import NAME_MAX

ID_COLUMN = "clip id"  # the id column of every project CSV (prompt files, Ophora-160K lists, manifests)


def slug(text: str) -> str:
    """Lower-case letters and digits joined by `_`: `Irrigation/Aspiration` -> `irrigation_aspiration`. Names
    compared loosely (phases, criteria) agree by it, and clip ids of a phase are made from it."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


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


def csv_text(path: Path, what: str) -> io.StringIO:
    """The file's text ready for the csv module: quoted fields may span lines (never split the text into lines first)."""
    return io.StringIO(read_text_file(path, what), newline="")


def read_id_text_rows(path: Path, id_column: str, text_column: str, what: str, hint: str = "") -> list[tuple[int, str, str]]:
    """(line, id, text) for every row of a CSV with an id and a text column.

    Checks that both columns exist (naming the columns the file has, then `hint`), that every id can be a
    file or folder name, and that no id repeats. Quoted fields may span lines: their line breaks and runs
    of whitespace become single spaces. Texts are stripped and may be empty: callers decide. `line` is the
    row's first line in the file.
    """
    reader = csv.DictReader(csv_text(path, what))
    try:
        columns = reader.fieldnames or []
        absent = [c for c in (id_column, text_column) if c not in columns]
        if absent:
            raise InputError(f"{path} has no column {', '.join(repr(c) for c in absent)}; its columns are "
                             f"{', '.join(repr(c) for c in columns) or 'none'}{hint}")
        rows, seen, line = [], {}, reader.line_num + 1
        for row in reader:
            key, text = (row[id_column] or "").strip(), " ".join((row[text_column] or "").split())
            check_id(key, f"{path} line {line}: {id_column}")
            if key in seen:
                raise InputError(f"{path}: duplicate {id_column} {key!r} on lines {seen[key]} and {line}")
            seen[key] = line
            rows.append((line, key, text))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: not a readable CSV row ({exc})") from None
    return rows


def check_id(key: str, where: str) -> None:
    """Raise InputError (starting with `where`) unless `key` can be a file or folder name on any file system."""
    if not key:
        raise InputError(f"{where} is empty")
    if "/" in key or "\\" in key or key in (".", "..") or any(ord(c) < 32 for c in key):
        raise InputError(f"{where} {key[:80]!r} cannot be a file or folder name (no /, \\, control characters "
                         "or NUL bytes; not . or ..)")
    if len(key.encode()) > NAME_MAX:
        raise InputError(f"{where} is {len(key.encode())} bytes long ({key[:40]!r}...); ids name files and "
                         f"folders, which hold at most {NAME_MAX} bytes: shorten it")
