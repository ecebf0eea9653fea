"""Atomic files and claimed folders: no reader ever sees half a file, and no folder mixes two sets of settings.

Every file is written under a hidden temporary sibling name and renamed into place; folders (checkpoints,
exported pipelines) the same way. A folder that a stage fills (a latent cache, a run) is *claimed*: its
record holds the settings identity, and a later run may only continue it with the same identity.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ophora.core.errors import LOG_FILE, InputError

PARTIAL = ".partial"


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def _short(stem: str, tail: str) -> str:
    """`.{stem}{tail}`, with the stem replaced by a hash of it when the name would pass NAME_MAX bytes."""
    name = f".{stem}{tail}"
    if len(name.encode()) <= NAME_MAX:
        return name
    return f".{hashlib.sha256(stem.encode()).hexdigest()[:16]}{tail}"


def temp_path(path: Path) -> Path:
    """A hidden sibling name for writing `path` atomically; unique per process and thread, and a valid file name
    whenever `path`'s is (a name at the file-system limit gets a hashed temporary name)."""
    return path.with_name(_short(path.stem, f"{PARTIAL}{os.getpid()}-{threading.get_ident()}{path.suffix}"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces the folder `path`, on failure it is removed."""
    tmp = temp_dir(Path(path))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, Path(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_dir(path: Path) -> Path:
    """The hidden sibling folder in which `path` is built (the same name on every rank)."""
    return path.with_name(_short(path.name, PARTIAL))


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder `tmp` to `path`, replacing what was there."""
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


MIN_FREE_BYTES = 16 * 2**20  # an output folder's disk needs at least this much free space to start


def check_output_folder(folder: str | Path, free_bytes=lambda p: shutil.disk_usage(p).free) -> None:
    """Raise InputError naming `folder` unless it is, or can be made, a writable folder on a disk with space.

    Checked before a stage starts work: an existing file in its place or above it, a folder or file system
    that refuses writes (a test file is created and removed), and a full disk (`free_bytes` of the nearest
    existing folder below MIN_FREE_BYTES).
    """
    folder = Path(folder)
    try:
        existing = folder.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "is a file" if existing == folder.absolute() else f"is inside {existing}, which is a file"
            raise InputError(f"output folder {folder} {what}, not a folder; choose another path")
        with tempfile.TemporaryFile(dir=existing, prefix=f".ophora{PARTIAL}") as probe:
            probe.write(b"0")
            probe.flush()
            os.fsync(probe.fileno())
        free = free_bytes(existing)
    except OSError as exc:
        raise InputError(f"output folder {folder} cannot be written ({exc.strerror or type(exc).__name__} in "
                         f"{existing}); choose another folder or fix its permissions") from None
    if free < MIN_FREE_BYTES:
        raise InputError(f"output folder {folder} is on a full disk ({free / 2**20:.1f} MiB free in {existing}); "
                         "free some space or choose another folder")


def remove_partials(folder: Path) -> int:
    """Delete the temporary files and folders a killed run left under `folder`; returns how many."""
    stale = [p for p in folder.rglob(f".*{PARTIAL}*")] if folder.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(stale)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (creating its folder)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically (creating its folder)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON atomically; paths and other objects become strings."""
    return write_text(path, json.dumps(data, indent=1, default=str, ensure_ascii=False))


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


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or an InputError naming the damaged file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{what} {path} is damaged or unreadable ({type(exc).__name__}); delete it or use another "
                         "output folder") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} does not hold a JSON object; delete it or use another output folder")
    return data


def differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two settings identities, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def as_json_value(data):
    """`data` as it reads back from JSON (tuples become lists, paths strings), for comparing identities."""
    return json.loads(json.dumps(data, default=str))


def claim_folder(folder: Path, record: str, identity: dict, what: str, hint: str) -> bool:
    """Check that `folder` is new, empty, or holds `what` made with the same `identity`.

    Returns True when it already holds that same work (to be resumed). `record` is the file (inside the
    folder) whose "identity" key holds the settings; `hint` tells the user how to choose another folder.
    Raises InputError when the folder holds something else. Writing the record is the caller's business.
    """
    path = folder / record
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder; {hint}")
    if path.is_file():
        record_data = read_json(path, f"the record of this {what}")
        old = record_data.get("identity", record_data.get("settings"))  # caches made before 0.2 say "settings"
        changed = differences(old if isinstance(old, dict) else {}, as_json_value(identity))
        if changed:
            raise InputError(f"{folder} holds a {what} made with other settings ({', '.join(changed)} differ); {hint}")
        return True
    if folder.is_dir() and any(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != LOG_FILE):
        raise InputError(f"{folder} is not empty and holds no {what}; {hint}")
    return False
