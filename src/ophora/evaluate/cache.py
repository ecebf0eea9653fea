"""The feature cache: what was computed for a video is kept, so a second run on the same videos computes nothing.

An entry is named by the video (its resolved path, size and modification time: a changed or replaced file
is a new video) and by everything the value depends on (the kind of value, the weights' sha256, the
protocol's settings). Arrays are `.npy`, small records `.json`; each is written atomically, so a killed
run leaves no half entry. `computed` and `reused` count, per kind, what this process did.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ophora.core.files import atomic_path, write_json


def video_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class FeatureCache:
    """Values per (video, kind, settings) under `folder`; `folder=None` keeps nothing (always computes)."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None
        self.computed: Counter[str] = Counter()
        self.reused: Counter[str] = Counter()

    def _path(self, video: Path, kind: str, settings: dict, suffix: str) -> Path:
        key = json.dumps({"video": video_identity(video), "kind": kind, "settings": settings}, sort_keys=True,
                         default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.folder / kind / digest[:2] / f"{digest}{suffix}"

    def array(self, video: Path, kind: str, settings: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or `compute()` stored for next time."""
        path = self._path(video, kind, settings, ".npy") if self.folder else None
        if path is not None and path.is_file():
            try:
                value = np.load(path, allow_pickle=False)
                self.reused[kind] += 1
                return value
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        value = np.asarray(compute())
        self.computed[kind] += 1
        if path is not None:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, value, allow_pickle=False)
        return value

    def record(self, video: Path, kind: str, settings: dict, compute: Callable[[], dict]) -> dict:
        """The cached JSON record, or `compute()` stored for next time."""
        path = self._path(video, kind, settings, ".json") if self.folder else None
        if path is not None and path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
                self.reused[kind] += 1
                return value
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        value = compute()
        self.computed[kind] += 1
        if path is not None:
            write_json(path, value)
        return value

    def has(self, video: Path, kind: str, settings: dict, suffix: str = ".npy") -> bool:
        return self.folder is not None and self._path(video, kind, settings, suffix).is_file()

    def counts(self) -> dict[str, dict[str, int]]:
        return {"computed": dict(self.computed), "reused": dict(self.reused)}
