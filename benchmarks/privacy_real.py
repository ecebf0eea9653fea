"""The privacy filter's recall and false flags on clips made from the real Cataract-1K frames, and its cost.

Builds the real-frame test set of `ophora.synthetic.privacy_clips` (9 kinds of burned-in text and overlays,
`--per-kind` clips each, varied in size, colour, position and display time down to 1 s, and as many clean twins
of the same views, a third with a row of air bubbles and a third with specular glints) once per seed, curates
the folder with the default settings, and counts which clips left the privacy-preserved subset. The detector
was developed on seed 0 (`--tuned`); the other seeds (other views per kind, positions, colours, sizes, times
and motion) are the held-out split, reported on their own. The cost is the curate time with the filter on
minus the time with `--privacy off`, per second of video.

    python benchmarks/privacy_real.py [--per-kind 4] [--seeds 0,1] [--tuned 0] [--workers N] [--data DIR]
    # writes benchmarks/results/privacy_real.json (or --json PATH)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pandas as pd  # noqa: E402

from ophora.core.privacy import PrivacyConfig  # noqa: E402
from ophora.curate.pipeline import CurateConfig, curate  # noqa: E402
from ophora.synthetic.privacy_clips import KINDS, SECONDS, plan_clips, write_privacy_clips  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(data: Path, out: Path, workers: int, privacy: PrivacyConfig) -> tuple[pd.DataFrame, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    curate(CurateConfig(input=data, out=out, workers=workers, privacy=privacy))
    seconds = time.perf_counter() - start
    return pd.read_parquet(out / "manifest.parquet"), seconds


def measure(truth: list[dict], manifest: pd.DataFrame) -> dict:
    """Recall per kind, false flags per clean-twin extra, and the clips the content filters dropped."""
    rows = manifest.set_index("source")
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_extra: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_shown: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    not_kept, missed, false_flags = [], [], []
    for clip in truth:
        row = rows.loc[f"{clip['name']}.mp4"]
        if row["decision"] != "keep":
            not_kept.append(f"{clip['name']} ({row['reason']})")
            continue
        flagged = int(row["privacy_reason"] != "")
        if clip["flagged"]:
            per_kind[clip["kind"]][0] += flagged
            per_kind[clip["kind"]][1] += 1
            per_shown[f"{clip['shown_s']:g} s"][0] += flagged
            per_shown[f"{clip['shown_s']:g} s"][1] += 1
            if not flagged:
                missed.append(clip["name"])
        else:
            per_extra[clip["extra"] or "plain"][0] += flagged
            per_extra[clip["extra"] or "plain"][1] += 1
            if flagged:
                false_flags.append(f"{clip['name']} ({row['privacy_reason']})")
    caught, with_overlay = (sum(v[i] for v in per_kind.values()) for i in (0, 1))
    flags, clean = (sum(v[i] for v in per_extra.values()) for i in (0, 1))
    return {
        "recall": round(caught / max(with_overlay, 1), 3), "caught": caught, "with_overlay": with_overlay,
        "false_flag_rate": round(flags / max(clean, 1), 3), "false_flags": flags, "clean": clean,
        "per_kind": {k: {"caught": per_kind[k][0], "clips": per_kind[k][1]} for k in KINDS},
        "per_display_time": {k: {"caught": v[0], "clips": v[1]} for k, v in sorted(per_shown.items())},
        "per_clean_extra": {k: {"flagged": v[0], "clips": v[1]} for k, v in sorted(per_extra.items())},
        "missed": missed, "falsely_flagged": false_flags, "not_kept": not_kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "real"))
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--seeds", default="0,1", help="one test set per seed, e.g. 0,1")
    parser.add_argument("--tuned", default="0", help="the seeds the detector was developed on (the rest are held out)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--data", default=None, help="keep the generated clips here (reused when present)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "privacy_real.json"))
    args = parser.parse_args()
    real = Path(args.real)
    if not (real / "cataract1k_frames").is_dir():
        sys.exit(f"privacy_real: real data not found at {real} (--real)")
    seeds = [int(v) for v in args.seeds.split(",")]
    tuned = {int(v) for v in args.tuned.split(",")}
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="privacy-real-"))
    clips = {seed: [replace(c, name=f"s{seed}_{c.name}") for c in plan_clips(real, args.per_kind, seed)]
             for seed in seeds}
    truth = {seed: write_privacy_clips(real, data, seed_clips) for seed, seed_clips in clips.items()}
    count = sum(len(v) for v in clips.values())
    out = data.parent / f"{data.name}-out"

    off, off_s = _run(data, out, args.workers, PrivacyConfig(backend="off"))
    manifest, seconds = _run(data, out, args.workers, PrivacyConfig())
    splits = {"held_out": [c for s in seeds if s not in tuned for c in truth[s]],
              "tuned_on": [c for s in seeds if s in tuned for c in truth[s]],
              "all": [c for s in seeds for c in truth[s]]}
    result = {
        "clips": count, "seeds": seeds, "tuned_on_seeds": sorted(tuned), "seconds_per_clip": SECONDS,
        "size": "1024x768", "fps": 25.0, "workers": args.workers, "cpu_cores": os.cpu_count(),
        "settings": {k: v for k, v in PrivacyConfig().__dict__.items() if not k.startswith("vlm")},
        "curate_privacy_off_s": round(off_s, 2), "curate_s": round(seconds, 2),
        "privacy_s_per_video_s": round((seconds - off_s) / (count * SECONDS), 4),
        **{name: measure(split, manifest) for name, split in splits.items() if split},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({name: {k: result[name][k] for k in ("recall", "false_flag_rate", "missed", "falsely_flagged",
                                                          "not_kept")} for name in splits if name in result}
                     | {"privacy_s_per_video_s": result["privacy_s_per_video_s"]}))
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
