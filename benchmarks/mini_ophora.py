"""The Ophora paper's two claims at mini scale: P2FT stops burned-in text and watermarks (while the videos still
follow the instruction), and generated videos help a phase classifier.

Every step runs the real stage through its CLI entry (`ophora.cli.main([...])`) on a procedural surgery world:

    world      make_surgery_world: narrated surgeries, 12 phases, 30% with a caption or a channel bug over all their
               phases but the first or the last (about a fifth of the training clips)
    curate     ophora curate (its privacy filter makes privacy_preserved.csv); clip phases from the ground truth;
               some source videos are held out (FVD reference, downstream test, prompts)
    model      a CogVideoX-architecture pipeline: VAE trained on the training clips' frames (synthetic/mini_model.py),
               random tiny T5, random transformer
    prepare    ophora prepare (latent cache with that VAE)
    tpt, p2ft  ophora train: TPT on all training clips, then P2FT on their privacy-preserved subset
    sample     ophora sample from both models, the same prompts (held-out instructions, N per phase) and seeds
    evaluate   ophora evaluate: privacy leakage and FVD (random I3D: no trained one is available offline) vs held-out
    phases     ophora downstream with the generated videos as test videos: phase accuracy of a classifier trained
               on the world's training videos, per model (does the video show the instructed phase?)
    downstream ophora downstream: a small real training set, with and without the P2FT videos, tested on held-out
    report     results JSON, a figure and a frame grid

Each finished step is recorded in OUT/steps.json and skipped on a rerun; the stages resume their own partial
work, so a killed run loses at most the item in hand. Run it in pieces on a machine that kills long commands:

    timeout -s INT 570 python benchmarks/mini_ophora.py --out runs/mini --device cuda --max-minutes 8
    # (rerun the same line until it prints the results path; --pack/--unpack carry OUT between fresh machines)
    python benchmarks/mini_ophora.py --toy --out /tmp/mini      # the whole chain on a CPU in minutes, toy numbers
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora import cli
from ophora.core.files import (
    as_json_value,
    differences,
    read_json,
    write_csv,
    write_json,
)
from ophora.core.tables import ID_COLUMN
from ophora.synthetic import mini_experiment as mx

log = logging.getLogger("mini_ophora")
STEPS_FILE = "steps.json"
SETTINGS_FILE = "settings.json"
PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
EXIT_STOPPED = 3


@dataclass(frozen=True)
class Profile:
    """Every size of the experiment: `MINI` for one H200 in under 20 minutes, `TOY` for a CPU test."""

    videos: int            # source videos of the world
    holdout: int           # of them held out (never trained on)
    small_train: int       # real training videos of the downstream-gain experiment
    width: int
    height: int
    phases_per_video: tuple[int, int]
    seconds: tuple[float, float]
    model: str             # random_pipeline.SIZES
    frames: int            # frames per training clip / generated video (8k+1)
    vae_frames: int        # frames per VAE training window (8k+1: the decoder returns 4k+1 frames only for odd k)
    vae_steps: int
    vae_batch: int
    vae_edge_weight: float  # weight of mini_model.edge_loss in the VAE's loss: keeps letters' edges (leakage_control)
    tpt_config: str
    tpt_steps: int
    p2ft_config: str
    p2ft_steps: int
    per_phase: int         # generated videos per phase and model
    phases: int            # phases prompted (the first of the twelve with held-out instructions)
    sample_steps: int
    guidance: float        # 1: no classifier-free guidance (the trainer has no caption dropout, so the model
                           # never learned an unconditional prediction to guide from)
    classifier: str        # ophora downstream's --model, and its clip settings
    clip_frames: int
    clip_size: int
    clip_fps: float
    clips_per_segment: int
    epochs: int
    batch: int
    lr: float


# The third run's MINI (docs/evidence.md, "Claim 1: where the overlays are lost"): the second run's plus an edge term in
# the VAE's loss, 2500 VAE steps (was 1500) and 5000 TPT steps (was 2500), about 4.5 more H200 minutes.
MINI = Profile(videos=60, holdout=12, small_train=12, width=192, height=128, phases_per_video=(3, 6),
               seconds=(3.0, 6.0), model="mini", frames=17, vae_frames=9, vae_steps=2500, vae_batch=8,
               vae_edge_weight=1.0, tpt_config="mini-tpt", tpt_steps=5000, p2ft_config="mini-p2ft", p2ft_steps=800,
               per_phase=6, phases=12, sample_steps=30, guidance=1.0, classifier="mvit_v2_tiny", clip_frames=8,
               clip_size=32, clip_fps=4.0, clips_per_segment=2, epochs=12, batch=8,
               lr=2e-3)  # the classifier: tests/test_surgery_world.py's
TOY = Profile(videos=5, holdout=2, small_train=2, width=96, height=64, phases_per_video=(2, 3), seconds=(2.5, 3.0),
              model="tiny", frames=9, vae_frames=9, vae_steps=3, vae_batch=1, vae_edge_weight=1.0, tpt_config="tiny-tpt",
              tpt_steps=4, p2ft_config="tiny-p2ft", p2ft_steps=2, per_phase=1, phases=4, sample_steps=2, guidance=1.0,
              classifier="mvit_v2_tiny", clip_frames=8, clip_size=32, clip_fps=8.0, clips_per_segment=1, epochs=1,
              batch=4, lr=1e-3)


class Stopped(Exception):
    """The time budget is spent; a rerun continues with the step named."""


class Steps:
    """Runs named steps once: a finished step is recorded (with its seconds) in OUT/steps.json and skipped later."""

    def __init__(self, out: Path, max_seconds: float | None = None):
        self.out, self.max_seconds, self.start = out, max_seconds, time.monotonic()
        self.file = out / STEPS_FILE
        self.done: dict = read_json(self.file, "the step record") if self.file.is_file() else {}
        self.ran: list[str] = []

    def run(self, name: str, fn) -> dict:
        """Run `fn()` (returning a JSON-able dict) unless `name` is done; returns its record."""
        if name in self.done:
            log.info("step %s: done before, skipped", name)
            return self.done[name]
        if self.max_seconds is not None and time.monotonic() - self.start > self.max_seconds:
            raise Stopped(name)
        log.info("step %s ...", name)
        t = time.perf_counter()
        result = fn() or {}
        self.done[name] = {**result, "seconds": round(time.perf_counter() - t, 2)}
        write_json(self.file, self.done)
        self.ran.append(name)
        return self.done[name]


def ophora(*args: object) -> None:
    """Run one `ophora` command in this process; anything but exit 0 stops the experiment."""
    argv = [str(a) for a in args]
    log.info("ophora %s", " ".join(argv))
    code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"ophora {argv[0]} exited with {code}; fix it and rerun to resume")


def claim(out: Path, settings: dict) -> None:
    """Record the settings of a new OUT, or refuse an OUT made with others."""
    path = out / SETTINGS_FILE
    if path.is_file():
        changed = differences(read_json(path, "the experiment settings"), as_json_value(settings))
        if changed:
            raise SystemExit(f"{out} was made with other settings ({', '.join(changed)} differ); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


# ------------------------------------------------------------------------------------------------ the steps


class Experiment:
    """The steps of the experiment in OUT; each returns what its record in steps.json keeps."""

    def __init__(self, out: Path, profile: Profile, device: str, workers: int):
        self.out, self.p, self.device, self.workers = out, profile, device, workers
        self.world, self.dataset = out / "world", out / "dataset"
        self.splits = out / "splits"

    def holdout(self) -> list[str]:
        return read_json(self.splits / "holdout.json", "the held-out videos")["videos"]

    def make_world(self) -> dict:
        from ophora.synthetic.surgery_world import make_surgery_world

        p = self.p
        shutil.rmtree(self.world, ignore_errors=True)  # a half-written world is made again
        make_surgery_world(self.world, videos=p.videos, size=(p.width, p.height), fps=8.0, overlay_share=0.3,
                           seed=0, phases_per_video=p.phases_per_video, seconds=p.seconds)
        truth = mx.read_truth(self.world)
        return {"videos": len(truth["videos"]), "overlay_videos": truth["overlay_videos"]}

    def curate(self) -> dict:
        truth = mx.read_truth(self.world)
        ophora("curate", self.world / "videos", "--out", self.dataset, "--workers", self.workers,
               *truth["curate_flags"])
        holdout = mx.choose_holdout(truth, self.p.holdout)
        labels = mx.clip_labels(self.dataset, truth)
        held = set(holdout)
        write_json(self.splits / "labels.json", labels)
        write_json(self.splits / "holdout.json", {"videos": holdout})
        train = mx.write_subset(self.splits / "train.csv", labels, lambda lab: lab["video"] not in held)
        clean = mx.write_subset(self.splits / "train_privacy_preserved.csv", labels,
                                lambda lab: lab["video"] not in held and lab["privacy_preserved"])
        real = mx.write_real_listing(self.splits / "holdout_clean.csv", self.dataset, labels,
                                     lambda lab: lab["video"] in held and lab["privacy_preserved"])
        overlaid = [lab for lab in labels.values() if lab["overlay"]]
        plain = [lab for lab in labels.values() if not lab["overlay"]]
        return {"kept_clips": len(labels), "train_clips": train, "train_privacy_preserved": clean,
                "train_clips_with_overlay": sum(lab["video"] not in held for lab in overlaid),
                "privacy_filter": {"overlay_clips": len(overlaid),  # against the world's ground truth
                                   "overlay_clips_flagged": sum(not lab["privacy_preserved"] for lab in overlaid),
                                   "clean_clips": len(plain),
                                   "clean_clips_flagged": sum(not lab["privacy_preserved"] for lab in plain)},
                "holdout_videos": holdout, "holdout_clean_clips": real, "phases": mx.counts_by(labels, "phase")}

    def model(self) -> dict:
        from ophora.synthetic.mini_model import make_mini_model

        labels = read_json(self.splits / "labels.json", "the clip labels")
        held = set(self.holdout())
        clips = [self.dataset / "clips" / f"{c}.mp4" for c, lab in sorted(labels.items()) if lab["video"] not in held]
        check = [self.dataset / "clips" / f"{c}.mp4" for c, lab in sorted(labels.items()) if lab["video"] in held]
        p = self.p
        return make_mini_model(self.out / "model", clips, p.model, p.vae_frames, p.height, p.width, p.vae_steps,
                               vae_batch=p.vae_batch, vae_edge_weight=p.vae_edge_weight, check_clips=check[:8],
                               device=self.device)

    def prepare(self) -> dict:
        p = self.p
        ophora("prepare", self.dataset, "--model", self.out / "model", "--out", self.out / "cache",
               "--csv", (self.splits / "train.csv").absolute(), "--frame-buckets", p.frames, "--heights", p.height,
               "--widths", p.width, "--device", self.device)
        return {"clips": len(mx.read_rows(self.out / "cache" / "index.csv"))}

    def train(self, name: str, config: str, steps: int, model: Path, subset: Path | None = None) -> dict:
        run = self.out / name
        extra = [f"subset_csv={subset.absolute()}"] if subset else []
        if self.device == "cpu":
            extra += ["mixed_precision='no'", "validation_prompts=[]", "num_workers=0"]
        ophora("train", config, f"model={model}", f"cache={self.out / 'cache'}", f"out={run}", f"steps={steps}", *extra)
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line]
        shutil.rmtree(run / "checkpoints", ignore_errors=True)  # done: final/ is what the next steps read
        k = max(1, len(losses) // 10)
        return {"steps": steps, "loss_first_10pct": sum(losses[:k]) / k, "loss_last_10pct": sum(losses[-k:]) / k}

    def prompts(self) -> Path:
        path = self.splits / "prompts.csv"
        if not path.is_file():
            labels = read_json(self.splits / "labels.json", "the clip labels")
            held = set(self.holdout())
            phases = mx.read_truth(self.world)["phases"]
            write_csv(path, mx.PROMPT_COLUMNS, mx.phase_prompts(labels, held, self.p.per_phase, phases, self.p.phases))
        return path

    def sample(self, model: str) -> dict:
        p = self.p
        ophora("sample", "--model", self.out / model / "final", "--out", self.out / "samples" / model, "--prompts",
               self.prompts(), "--prompt-column", "instruction", "--steps", p.sample_steps, "--guidance", p.guidance,
               "--device", self.device)
        rows = mx.read_rows(self.out / "samples" / model / "manifest.csv")
        return {"videos": len(rows)}

    def evaluate(self, model: str) -> dict:
        from ophora.evaluate.random_weights import write_random_i3d

        i3d = self.out / "i3d_random.pt"
        if not i3d.is_file():
            write_random_i3d(i3d)
        out = self.out / "evaluate" / model
        ophora("evaluate", "--real", self.splits / "holdout_clean.csv", "--generated", self.out / "samples" / model,
               "--out", out, "--metrics", "fvd,leakage,temporal", "--i3d-weights", i3d, "--frames", self.p.frames,
               "--cache", self.out / "evaluate" / "features", "--device", self.device)
        m = read_json(out / "metrics.json", "the metrics")
        return {"leakage_rate": m["leakage_rate"], "fvd": m["fvd"], "temporal_consistency": m["temporal_consistency"],
                "counts": m["counts"], "flagged": {f["video"]: f["reason"] for f in m["leakage"]["flagged"]}}

    def _downstream(self, out: Path, annotations: list[Path], videos: Path, splits: Path, *extra: object) -> dict:
        p = self.p
        ophora("downstream", "--annotations", ",".join(map(str, annotations)), "--videos", videos, "--out", out,
               "--splits", splits, "--model", p.classifier, "--clip-frames", p.clip_frames, "--clip-size", p.clip_size,
               "--clip-fps", p.clip_fps, "--clips-per-segment", p.clips_per_segment, "--epochs", p.epochs,
               "--batch-size", p.batch, "--lr", p.lr, "--workers", min(self.workers, 4), "--device", self.device,
               *extra)
        return read_json(out / "results.json", "the downstream results")

    def phases(self, model: str) -> dict:
        """Phase accuracy of the generated videos: a classifier trained on the world's training videos, the
        generated videos as its test set, each labelled with its prompt's phase."""
        held = set(self.holdout())
        train = [v for v in mx.read_truth(self.world)["videos"] if v not in held]
        phase_of = {r[ID_COLUMN]: r["phase"] for r in mx.read_rows(self.prompts())}
        folder = self.out / "phases" / model
        annotations, videos, splits = mx.generated_test_set(folder / "inputs", self.world, train,
                                                            self.out / "samples" / model, phase_of)
        result = self._downstream(folder / "run", annotations, videos, splits)
        test = result["runs"]["real"]["test"]
        return {"phase_accuracy": test["segment"]["top1"], "macro_f1": test["segment"]["macro_f1"],
                "test_videos": result["splits"]["test"]["videos"], "classifier_train_videos": len(train),
                "classes": len(result["phases"])}

    def downstream(self) -> dict:
        """A small real training set, with and without the P2FT videos, tested on the held-out real videos."""
        held = self.holdout()
        train = [v for v in mx.read_truth(self.world)["videos"] if v not in set(held)][:self.p.small_train]
        splits = mx.write_splits(self.splits / "downstream_splits.csv",
                                 {**{v: "train" for v in train}, **{v: "test" for v in held}})
        out = self.out / "downstream"
        result = self._downstream(out, [self.world / "annotations" / v for v in [*train, *held]],
                                  self.world / "videos", splits, "--synthetic", self.out / "samples" / "p2ft",
                                  "--phase-map", self.prompts())
        runs = result["runs"]
        return {"top1": {name: r["test"]["segment"]["top1"] for name, r in runs.items()},
                "train_clips": {name: r["train"]["clips"] for name, r in runs.items()},
                "test_videos": result["splits"]["test"]["videos"], "generated_clips": result["generated"]["clips"]}


# ------------------------------------------------------------------------------------------------ state and report


# Folders of OUT that no step reads once the step named is done (the report reads steps.json): `pack` leaves
# them out, so the state stays small enough to carry between machines.
NEEDED_UNTIL = {"model": "tpt", "cache": "p2ft", "tpt/final": "sample_tpt", "evaluate": "evaluate_p2ft",
                "phases/tpt": "phases_tpt", "phases/p2ft": "phases_p2ft", "downstream": "downstream"}


def packed(name: str, done: dict) -> bool:
    """Whether `pack` keeps the member `name` (relative to OUT): not a training checkpoint (a train step
    interrupted on one machine restarts on another), no weights or clip cache of a downstream run (it trains
    and cuts again), no temporary file, and nothing that no step still to run reads."""
    parts = Path(name).parts
    if "checkpoints" in parts or any(p.startswith(".") and "partial" in p for p in parts):
        return False
    if parts and parts[0] in ("phases", "downstream") and name.endswith(".safetensors"):
        return False
    return not any(step in done and (name == folder or name.startswith(folder + "/"))
                   for folder, step in NEEDED_UNTIL.items())


def pack(out: Path, folder: Path) -> list[Path]:
    """OUT as a tar in parts of at most PART_BYTES (`state.tar.000`, ...) in `folder` (see `packed`)."""
    done = read_json(out / STEPS_FILE, "the step record") if (out / STEPS_FILE).is_file() else {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(out.rglob("*")):
            name = path.relative_to(out).as_posix()
            if not path.is_dir() and packed(name, done):
                tar.add(path, arcname=name, recursive=False)
    data = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for k in range(0, max(1, len(data)), PART_BYTES):
        parts.append(folder / f"state.tar.{k // PART_BYTES:03d}")
        parts[-1].write_bytes(data[k:k + PART_BYTES])
    return parts


def unpack(folder: Path, out: Path) -> bool:
    """Restore OUT from `pack`'s parts when OUT has no steps yet; returns whether it did."""
    parts = sorted(folder.glob("state.tar.[0-9][0-9][0-9]"))
    if not parts or (out / STEPS_FILE).is_file():
        return False
    data = b"".join(p.read_bytes() for p in parts)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="data")
    return True


def figure(results: dict, path: Path) -> None:
    """Four panels: leakage, phase accuracy, FVD (TPT vs P2FT) and downstream top-1 (real vs real + generated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("privacy leakage rate (lower is better)", results["leakage_rate"], ("tpt", "p2ft")),
              ("phase accuracy of generated videos", results["phase_accuracy"], ("tpt", "p2ft")),
              ("FVD vs held-out clips (random I3D)", results["fvd"], ("tpt", "p2ft")),
              ("downstream phase top-1 (held-out real)", results["downstream_top1"], ("real", "real_plus_generated"))]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (title, values, keys) in zip(axes, panels):
        bars = ax.bar([k.replace("_", " ") for k in keys], [values[k] for k in keys], color=("#c0504d", "#4f81bd"))
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title, fontsize=10)
        if "FVD" not in title:  # the others are shares and accuracies
            ax.set_ylim(0, 1.05)
    fig.suptitle(f"mini Ophora ({results['profile']}, {results['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def frame_grid(out: Path, prompts: list[dict], path: Path) -> int:
    """One row per phase: the middle frame of a real clip of it (held out where one is), of the first TPT and
    of the first P2FT video of it; returns the rows drawn."""
    import cv2
    import numpy as np

    from ophora.core.media import read_video

    labels = read_json(out / "splits" / "labels.json", "the clip labels")
    held = set(read_json(out / "splits" / "holdout.json", "the held-out videos")["videos"])
    manifests = {m: {r[ID_COLUMN]: r for r in mx.read_rows(out / "samples" / m / "manifest.csv")} for m in ("tpt", "p2ft")}
    rows = []
    for phase in dict.fromkeys(r["phase"] for r in prompts):
        first = next(r[ID_COLUMN] for r in prompts if r["phase"] == phase)
        real = min((c for c, lab in labels.items() if lab["phase"] == phase),  # a held-out clip where there is one
                   key=lambda c: (labels[c]["video"] not in held, c), default=None)
        paths = [out / "dataset" / "clips" / f"{real}.mp4" if real else None,
                 *(out / "samples" / m / manifests[m][first]["path"] if first in manifests[m] else None
                   for m in ("tpt", "p2ft"))]
        frames = [read_video(p)[0] if p else None for p in paths]
        h, w = next(f.shape[1:3] for f in frames if f is not None)
        tiles = [cv2.resize(f[len(f) // 2], (w, h)) if f is not None else np.zeros((h, w, 3), np.uint8) for f in frames]
        label = np.full((h, 150, 3), 255, np.uint8)
        cv2.putText(label, phase[:20], (4, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, *tiles], axis=1))
    header = np.full((18, rows[0].shape[1], 3), 255, np.uint8)
    for k, text in enumerate(("real", "TPT", "P2FT")):
        cv2.putText(header, text, (150 + k * (rows[0].shape[1] - 150) // 3 + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, *rows]), cv2.COLOR_RGB2BGR))
    return len(rows)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def report(out: Path, steps: Steps, profile_name: str, profile: Profile, device: str, results_dir: Path,
           command: str) -> Path:
    d = steps.done
    prompts = mx.read_rows(out / "splits" / "prompts.csv")
    results = {
        "profile": profile_name, "numbers": "toy CPU run: plumbing only, not evidence" if profile_name == "toy" else
        "mini run", "device": device_name(device), "command": command,
        "leakage_rate": {"tpt": d["evaluate_tpt"]["leakage_rate"], "p2ft": d["evaluate_p2ft"]["leakage_rate"]},
        "training_clips_with_overlay": d["curate"]["train_clips_with_overlay"] / max(1, d["curate"]["train_clips"]),
        "privacy_filter": d["curate"]["privacy_filter"],
        "phase_accuracy": {"tpt": d["phases_tpt"]["phase_accuracy"], "p2ft": d["phases_p2ft"]["phase_accuracy"],
                           "chance": 1 / d["phases_tpt"]["classes"]},  # the classifier's phases
        "downstream_top1": {"real": d["downstream"]["top1"]["real"],
                            "real_plus_generated": d["downstream"]["top1"]["real+generated"]},
        "fvd": {"tpt": d["evaluate_tpt"]["fvd"], "p2ft": d["evaluate_p2ft"]["fvd"],
                "i3d": "random weights (write_random_i3d): no trained I3D is available offline, so FVD only compares "
                       "the two models with each other on the same random features, not with published numbers"},
        "clipscore": "not computed: no CLIP model knows this procedural world's words and looks, so a CLIPScore "
                     "would measure nothing; phase_accuracy is the instruction-following measure here",
        "samples": {"per_phase": profile.per_phase, "phases": len({r["phase"] for r in prompts}),
                    "tpt": d["sample_tpt"]["videos"], "p2ft": d["sample_p2ft"]["videos"],
                    "prompt_sources": mx.counts_by({str(i): r for i, r in enumerate(prompts)}, "source")},
        "counts": {"world_videos": d["world"]["videos"], "overlay_videos": d["world"]["overlay_videos"],
                   "kept_clips": d["curate"]["kept_clips"], "train_clips": d["curate"]["train_clips"],
                   "train_privacy_preserved": d["curate"]["train_privacy_preserved"],
                   "holdout_videos": len(d["curate"]["holdout_videos"]),
                   "holdout_clean_clips": d["curate"]["holdout_clean_clips"], "cache_clips": d["prepare"]["clips"]},
        "vae": d["model"]["vae"], "training": {"tpt": d["tpt"], "p2ft": d["p2ft"]},
        "phase_classifier": {m: d[f"phases_{m}"] for m in ("tpt", "p2ft")}, "downstream": d["downstream"],
        "profile_settings": asdict(profile), "seconds": {name: r["seconds"] for name, r in d.items()},
        "p2ft_model": str(out / "p2ft" / "final"),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    figure(results, results_dir / "mini_ophora.png")
    results["frame_grid_rows"] = frame_grid(out, prompts, results_dir / "mini_ophora_frames.png")
    return write_json(results_dir / "mini_ophora.json", results)


def run(args: argparse.Namespace) -> Path:
    profile_name = "toy" if args.toy else "mini"
    profile = TOY if args.toy else MINI
    out = Path(args.out)
    if args.unpack and unpack(Path(args.unpack), out):
        log.info("restored %s from %s", out, args.unpack)
    claim(out, {"profile": profile_name, **asdict(profile)})
    exp = Experiment(out, profile, args.device, args.workers)
    steps = Steps(out, args.max_minutes * 60 if args.max_minutes else None)
    steps.run("world", exp.make_world)
    steps.run("curate", exp.curate)
    steps.run("model", exp.model)
    steps.run("prepare", exp.prepare)
    steps.run("tpt", lambda: exp.train("tpt", profile.tpt_config, profile.tpt_steps, out / "model"))
    steps.run("p2ft", lambda: exp.train("p2ft", profile.p2ft_config, profile.p2ft_steps, out / "tpt" / "final",
                                        out / "splits" / "train_privacy_preserved.csv"))
    for model in ("tpt", "p2ft"):
        steps.run(f"sample_{model}", lambda m=model: exp.sample(m))
    for model in ("tpt", "p2ft"):
        steps.run(f"evaluate_{model}", lambda m=model: exp.evaluate(m))
        steps.run(f"phases_{model}", lambda m=model: exp.phases(m))
    steps.run("downstream", exp.downstream)
    results_dir = Path(args.results) if args.results else (out / "results" if args.toy else
                                                           Path(__file__).resolve().parent / "results")
    return report(out, steps, profile_name, profile, args.device, results_dir, args.command)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="experiment folder (every step's outputs; rerun to resume); required but with "
                   "--export-demo")
    p.add_argument("--toy", action="store_true", help="toy sizes for a CPU in minutes (numbers mean nothing)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="curate and loader processes")
    p.add_argument("--results", help="folder for mini_ophora.json/.png (default benchmarks/results; --toy: OUT/results)")
    p.add_argument("--max-minutes", type=float, help="start no new step after this many minutes (exit 3; rerun)")
    p.add_argument("--pack", help="afterwards (also when stopped), write OUT as state.tar.NNN parts into this folder")
    p.add_argument("--unpack", help="first restore OUT from the state.tar.NNN parts in this folder (if OUT is new)")
    p.add_argument("--export-demo", metavar="FINAL", help="only write FINAL (a run's p2ft/final) as the demo model "
                   "src/ophora/demo_model, with --results' mini_ophora.json as its provenance, and exit")
    args = p.parse_args(argv)
    if not (args.out or args.export_demo):
        p.error("--out is required")
    return args


def export_demo(final: Path, results: Path) -> Path:
    """The shipped demo model from a mini run's P2FT pipeline and its results."""
    from ophora.synthetic.demo_model import export_demo_model

    r = read_json(results / "mini_ophora.json", "the mini experiment's results")
    provenance = {"made_by": "benchmarks/mini_ophora.py --export-demo", "run": r["command"], "device": r["device"],
                  "results": "benchmarks/results/mini_ophora.json", "training": r["training"],
                  "phase_accuracy_of_its_videos": r["phase_accuracy"]["p2ft"], "chance": r["phase_accuracy"]["chance"],
                  "world": {k: r["profile_settings"][k] for k in ("videos", "width", "height")},
                  "sampling": {k: r["profile_settings"][k] for k in ("sample_steps", "guidance")}}
    return export_demo_model(final, Path(__file__).resolve().parents[1] / "src" / "ophora" / "demo_model", provenance)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.command = " ".join(["python", "benchmarks/mini_ophora.py", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.export_demo:
        print(export_demo(Path(args.export_demo), Path(args.results or Path(__file__).resolve().parent / "results")))
        return 0
    code = 0
    try:
        print(run(args))
    except Stopped as stop:
        print(f"time budget spent; rerun the same command to continue with step {stop}", file=sys.stderr)
        code = EXIT_STOPPED
    finally:
        if args.pack:
            log.info("packed %s into %s", args.out, ", ".join(p.name for p in pack(Path(args.out), Path(args.pack))))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
