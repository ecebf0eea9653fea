"""What `--real`, `--generated` and `--train-set` name, as a list of videos with their prompts and phases.

Accepted: a folder of videos (searched recursively); `ophora sample`'s output folder or its `manifest.csv`
(columns `clip id`, `prompt`, `path`); an Ophora-160K-layout dataset folder or its CSV (`clip id`,
`instruction`, videos in `clips/<clip id>.mp4`). A manifest's optional `phase` column names each video's
phase; otherwise sample's clip ids name it (`capsulorhexis_1` -> `capsulorhexis`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ophora.core.dataset import TEXT_COLUMN, read_pairs
from ophora.core.errors import InputError
from ophora.core.manifests import VIDEO_EXTENSIONS, Video, is_manifest, phase_of, read_manifest
from ophora.core.media import probe_video
from ophora.core.tables import ID_COLUMN, csv_text, read_id_text_rows

DATASET_CSVS = ("instructions.csv", "privacy_preserved.csv", "clips.csv")


def _phases(path: Path) -> dict[str, str]:
    """clip id -> the `phase` column, where the CSV has one."""
    rows = csv.DictReader(csv_text(path, "CSV"))
    if "phase" not in (rows.fieldnames or []):
        return {}
    return {(r.get(ID_COLUMN) or "").strip(): (r.get("phase") or "").strip() for r in rows}


def _read_dataset(folder: Path, csv_path: Path) -> list[Video]:
    phases = _phases(csv_path)
    return [Video(p.clip_id, p.path, p.instruction, phases.get(p.clip_id, ""))
            for p in read_pairs(folder, str(csv_path))]


def read_videos(spec: str | Path, flag: str) -> list[Video]:
    """The videos `spec` names (see the module's docstring); `flag` names the option in errors."""
    spec = Path(spec)
    if spec.is_file():
        if spec.suffix.lower() != ".csv":
            if spec.suffix.lower() in VIDEO_EXTENSIONS:
                return [Video(spec.stem, spec)]
            raise InputError(f"{flag} {spec}: not a folder, a CSV or a video")
        if is_manifest(spec):
            return read_manifest(spec)
        # a dataset CSV: the columns are checked (one line naming what the file has)
        read_id_text_rows(spec, ID_COLUMN, TEXT_COLUMN, "CSV", hint="; a dataset CSV has 'clip id' and "
                          "'instruction' (videos in clips/), a sample manifest 'clip id', 'prompt' and 'path'")
        return _read_dataset(spec.parent, spec)
    if not spec.is_dir():
        raise InputError(f"{flag} {spec}: no such folder or file")
    if (spec / "manifest.csv").is_file():  # a sample output folder; read as plain videos it would lose the prompts
        if not is_manifest(spec / "manifest.csv"):
            raise InputError(f"{flag} {spec / 'manifest.csv'} is not a sample manifest (it lacks 'prompt' or "
                             "'path'; `ophora sample` writes 'clip id', 'prompt' and 'path'); fix it, or move it "
                             "away to evaluate the folder's videos as plain videos")
        return read_manifest(spec / "manifest.csv")
    if (spec / "clips").is_dir():
        for name in DATASET_CSVS:
            if (spec / name).is_file():
                return _read_dataset(spec, spec / name)
    found = sorted(p for p in spec.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(spec).parts))
    if not found:
        raise InputError(f"{flag} {spec}: no videos found (looked recursively for "
                         f"{', '.join(VIDEO_EXTENSIONS)})")
    return [Video(str(p.relative_to(spec).with_suffix("")), p, "", phase_of(p.parent.name) if p.parent != spec else "")
            for p in found]


def check_videos(videos: list[Video], flag: str, min_frames: int = 0) -> dict[str, int]:
    """Open every video's container (a one-line MediaError for one that cannot be read) and check its length.

    Returns each video's frame count as the container states it (0 where it does not say).
    """
    counts = {}
    for video in videos:
        if not video.path.is_file():
            raise InputError(f"{flag}: video {video.path} not found")
        info = probe_video(video.path)
        counts[video.id] = info.frames
        if min_frames and 0 < info.frames < min_frames:
            raise InputError(short_message(video.path, info.frames, min_frames))
    return counts


def short_message(path: Path, frames: int, needed: int) -> str:
    return (f"{path} has {frames} frames; FVD needs {needed} consecutive frames per video (pass a smaller "
            f"--frames, or leave fvd out of --metrics)")
