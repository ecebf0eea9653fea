"""The data plumbing of the mini experiment (`benchmarks/mini_ophora.py`) over the procedural surgery world.

The world's ground truth (`surgery_world.make_surgery_world`: phase spans per video) and `ophora curate`'s
manifest give every curated clip its phase; from these come the held-out videos, the prompts (held-out
instructions per phase), and the listings the stages read: sample manifests of real clips (`ophora
evaluate --real`), split files and OphNet-layout annotations of generated videos (`ophora downstream`).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from ophora.core.errors import InputError
from ophora.core.files import read_json, write_csv
from ophora.core.media import probe_video
from ophora.core.tables import ID_COLUMN, slug

PROMPT_COLUMNS = (ID_COLUMN, "instruction", "phase", "source")
LISTING_COLUMNS = (ID_COLUMN, "n", "prompt", "path", "phase")
OPHNET_COLUMNS = ("video_id", "start", "end", "split", "phase_id")


def read_truth(world: Path) -> dict:
    """The world's ground_truth.json."""
    return read_json(world / "ground_truth.json", "the surgery world's ground truth")


def choose_holdout(truth: dict, count: int) -> list[str]:
    """`count` videos to hold out, chosen greedily so that together they show as many phases as possible."""
    videos = {stem: {s["phase"] for s in v["phases"]} for stem, v in truth["videos"].items()}
    if not 0 < count < len(videos):
        raise InputError(f"cannot hold out {count} of the world's {len(videos)} videos")
    chosen: list[str] = []
    seen: set[str] = set()
    for _ in range(count):
        best = max((v for v in sorted(videos) if v not in chosen), key=lambda v: len(videos[v] - seen))
        chosen.append(best)
        seen |= videos[best]
    return sorted(chosen)


def clip_labels(dataset: Path, truth: dict) -> dict[str, dict]:
    """clip id -> {video, phase, overlay, instruction, privacy_preserved} for every clip curate kept.

    A clip's phase is the ground-truth span it overlaps most (each narration is one span in this world).
    """
    import pandas as pd

    manifest = pd.read_parquet(dataset / "manifest.parquet")
    labels = {}
    for row in manifest[manifest["decision"] == "keep"].to_dict("records"):
        stem = Path(str(row["source"])).stem
        spans = truth["videos"].get(stem, {}).get("phases", [])
        overlap = [(min(row["end"], s["end"]) - max(row["start"], s["start"]), s) for s in spans]
        if not overlap or max(o for o, _ in overlap) <= 0:
            continue
        span = max(overlap, key=lambda o: o[0])[1]
        labels[row[ID_COLUMN]] = {"video": stem, "phase": span["phase"], "overlay": span["overlay"],
                                  "instruction": row["instruction"], "privacy_preserved": bool(row["privacy_preserved"])}
    if not labels:
        raise InputError(f"{dataset}: no kept clip lies on a phase of the world's ground truth")
    return labels


def write_subset(path: Path, labels: dict[str, dict], keep) -> int:
    """A dataset CSV (`clip id`, `instruction`) of the clips whose label `keep(label)` accepts; returns the count."""
    rows = [[c, lab["instruction"]] for c, lab in sorted(labels.items()) if keep(lab)]
    write_csv(path, (ID_COLUMN, "instruction"), rows)
    return len(rows)


def phase_prompts(labels: dict[str, dict], holdout: set[str], per_phase: int, phases: list[str],
                  most: int | None = None) -> list[dict]:
    """`per_phase` prompts for each of `phases` (at most `most` phases, those with held-out clips first): the
    instructions of held-out clips of that phase, in turn, or the training clips' where no held-out clip shows
    the phase (`source` says which)."""
    pools = []
    for phase in phases:
        held = sorted({lab["instruction"] for lab in labels.values() if lab["phase"] == phase
                       and lab["video"] in holdout})
        pool, source = (held, "held-out") if held else (sorted({lab["instruction"] for lab in labels.values()
                                                                  if lab["phase"] == phase}), "training")
        if pool:
            pools.append((phase, pool, source))
    chosen = sorted(pools, key=lambda p: p[2] != "held-out")[:most]
    rows = []
    for phase, pool, source in sorted(chosen, key=lambda p: phases.index(p[0])):
        rows += [{ID_COLUMN: f"{slug(phase)}_{k + 1}", "instruction": pool[k % len(pool)], "phase": phase,
                  "source": source} for k in range(per_phase)]
    return rows


def write_real_listing(path: Path, dataset: Path, labels: dict[str, dict], keep) -> int:
    """A sample-manifest listing (paths relative to it) of the curated clips `keep(label)` accepts."""
    rows = [{ID_COLUMN: c, "n": 0, "prompt": lab["instruction"], "phase": lab["phase"],
             "path": os.path.relpath(dataset / "clips" / f"{c}.mp4", path.parent)}
            for c, lab in sorted(labels.items()) if keep(lab)]
    write_csv(path, LISTING_COLUMNS, rows)
    return len(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _link(link: Path, target: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def generated_test_set(folder: Path, world: Path, train_videos: list[str], samples: Path, phase_of: dict[str, str],
                       val_every: int = 5) -> tuple[list[Path], Path, Path]:
    """The inputs of a downstream run whose test videos are generated ones: the world's `train_videos` train
    (every `val_every`-th validates) and every video of the `samples` manifest is a test video labelled with
    its prompt's phase (`phase_of`: clip id -> phase).

    Writes `folder/videos/` (links: the world's videos and `gen_<clip id>_<n>.mp4`), an OphNet-layout
    annotation file for the generated videos and `splits.csv`; returns (annotation paths, videos, splits).
    """
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    splits = []
    for k, stem in enumerate(sorted(train_videos)):
        _link(videos / f"{stem}.mp4", world / "videos" / f"{stem}.mp4")
        splits.append([stem, "val" if val_every and k % val_every == val_every - 1 else "train"])
    segments = []
    for row in read_rows(samples / "manifest.csv"):
        name = f"gen_{row[ID_COLUMN]}_{row['n']}"
        path = samples / row["path"]
        _link(videos / f"{name}.mp4", path)
        info = probe_video(path)
        duration = info.duration or info.frames / info.fps
        segments.append([name, 0.0, round(duration, 4), "test", phase_of[row[ID_COLUMN]]])
        splits.append([name, "test"])
    annotations = folder / "OphNet2024_loca_generated.csv"
    write_csv(annotations, OPHNET_COLUMNS, segments)
    write_csv(folder / "splits.csv", ("video", "split"), splits)
    return [*(world / "annotations" / s for s in sorted(train_videos)), annotations], videos, folder / "splits.csv"


def write_splits(path: Path, splits: dict[str, str]) -> Path:
    """A downstream `--splits` file: video -> train, val or test."""
    write_csv(path, ("video", "split"), sorted(splits.items()))
    return path


def counts_by(labels: dict[str, dict], key: str) -> dict[str, int]:
    """How many labels have each value of `key`."""
    out: dict[str, int] = defaultdict(int)
    for lab in labels.values():
        out[str(lab[key])] += 1
    return dict(sorted(out.items()))
