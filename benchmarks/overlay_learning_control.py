"""Positive control for the mini experiment's leakage figure, transformer side: once a mini transformer has seen
many overlaid clips, does `ophora evaluate`'s detector flag the overlays it draws?

`leakage_control.py` asks whether the world's overlays survive the mini VAE; this asks the same of the whole
model. It continues a trained mini pipeline (default: the shipped demo model, the second H200 run's P2FT model)
with `ophora train` (`configs/mini-tpt.yaml`) on overlaid clips only, of a fresh surgery world (seed 3, every
video with a caption or a channel bug over all its phases but one; the mini run trains on seed 0), through the
mini experiment's own steps (`benchmarks/mini_ophora.py`: world, curate, prepare with the pipeline's VAE, train,
sample). It then samples the pipeline before (`base`) and after (`tuned`) with the same prompts and seeds (30
steps, no guidance) and scores every video with `evaluate.leakage.leakage_record` (the detector and settings of
`ophora evaluate`). Runs on a CPU (about 2 s a training step on one busy core; 400 steps and 2 x 24 videos take
about 25 minutes). A rerun with the same --out skips the finished steps. Writes
benchmarks/results/overlay_learning_control.json.

    python benchmarks/overlay_learning_control.py --out /tmp/olc --steps 400
    python benchmarks/overlay_learning_control.py --out /tmp/olc2 --steps 400 --model /tmp/olc/tuned/final \\
        --results benchmarks/results/overlay_learning_control_800.json      # 400 more steps from there
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mini_ophora as mo  # the benchmark next to this one

from ophora.core.files import read_json
from ophora.core.media import read_video
from ophora.core.privacy import PrivacyConfig
from ophora.core.tables import ID_COLUMN
from ophora.core.versions import versions
from ophora.evaluate.leakage import leakage_record
from ophora.synthetic import mini_experiment as mx
from ophora.synthetic.surgery_world import make_surgery_world

WORLD = {"videos": 10, "holdout": 2, "seed": 3, "overlay_share": 1.0}
DEMO_MODEL = Path(__file__).resolve().parents[1] / "src" / "ophora" / "demo_model"


def scores(folder: Path) -> dict:
    """The detector's verdict on every video of a sample folder: counts and the reason per video."""
    reasons = []
    for row in mx.read_rows(folder / "manifest.csv"):
        frames, fps = read_video(folder / row["path"])
        reasons.append({"video": row[ID_COLUMN], "reason": leakage_record(frames, fps, PrivacyConfig())["reason"]})
    flagged = sum(bool(r["reason"]) for r in reasons)
    return {"videos": len(reasons), "flagged": flagged, "rate": round(flagged / max(1, len(reasons)), 3),
            "reasons": reasons}


def run(args: argparse.Namespace) -> dict:
    """The steps in args.out (each once), then the record written to args.results."""
    out = args.out
    profile = replace(mo.MINI, videos=WORLD["videos"], holdout=WORLD["holdout"], per_phase=args.per_phase)
    mo.claim(out, {"world": WORLD, "model": str(args.model), "steps": args.steps, "per_phase": args.per_phase})
    exp, steps = mo.Experiment(out, profile, "cpu", min(2, os.cpu_count() or 1)), mo.Steps(out)

    def world() -> dict:
        shutil.rmtree(exp.world, ignore_errors=True)
        make_surgery_world(exp.world, videos=profile.videos, size=(profile.width, profile.height), fps=8.0,
                           overlay_share=WORLD["overlay_share"], seed=WORLD["seed"],
                           phases_per_video=profile.phases_per_video, seconds=profile.seconds)
        return {}

    def model() -> dict:
        shutil.copytree(args.model, out / "model", dirs_exist_ok=True)
        return {}

    steps.run("world", world)
    steps.run("curate", exp.curate)
    steps.run("model", model)
    steps.run("prepare", exp.prepare)
    labels = read_json(out / "splits" / "labels.json", "the clip labels")
    held = set(exp.holdout())
    overlaid = mx.write_subset(out / "splits" / "overlaid.csv", labels,
                               lambda lab: lab["video"] not in held and lab["overlay"])
    (out / "base").mkdir(exist_ok=True)
    if not (out / "base" / "final").exists():
        (out / "base" / "final").symlink_to(out / "model")  # sample reads MODEL/final
    steps.run("tuned", lambda: exp.train("tuned", "mini-tpt", args.steps, out / "model", out / "splits" / "overlaid.csv"))
    for name in ("base", "tuned"):
        steps.run(f"sample_{name}", lambda n=name: exp.sample(n))
    record = {"question": __doc__.split("\n\n")[0], "model": str(args.model), "world": WORLD,
              "overlaid_training_clips": overlaid, "steps": args.steps, "config": "mini-tpt",
              "samples": {"per_phase": args.per_phase, "sample_steps": profile.sample_steps,
                          "guidance": profile.guidance},
              "detector": "ophora.evaluate.leakage.leakage_record, PrivacyConfig()",
              **{name: scores(out / "samples" / name) for name in ("base", "tuned")},
              "training": steps.done["tuned"], "seconds": {k: v["seconds"] for k, v in steps.done.items()},
              "machine": platform.machine(), "versions": versions("diffusers"),
              "command": " ".join(["python", "benchmarks/overlay_learning_control.py", *sys.argv[1:]])}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (rerun to resume)")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="the mini pipeline to continue "
                        "(default: the shipped demo model)")
    parser.add_argument("--steps", type=int, default=400, help="training steps on the overlaid clips")
    parser.add_argument("--per-phase", type=int, default=2, help="videos sampled per phase (12 phases)")
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "overlay_learning_control.json")
    args = parser.parse_args()
    start = time.perf_counter()
    record = run(args)
    print(json.dumps({k: {"videos": record[k]["videos"], "flagged": record[k]["flagged"]} for k in ("base", "tuned")}))
    print(f"{args.results} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
