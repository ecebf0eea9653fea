"""Positive control for the mini experiment's leakage figure: would `ophora evaluate` see an overlay that a model
reproduced as faithfully as its own VAE can?

The mini runs' TPT videos had leakage rate 0, so P2FT had nothing to remove. This script measures whether the
world's overlays survive a mini VAE. On a fresh surgery world (seed 7; the mini run trains on seed 0) it takes a
17-frame window from the middle of every phase span, with or without an overlay over it (the world's ground
truth), and scores with `evaluate.leakage.leakage_record` (the detector and settings `ophora evaluate` uses) (a)
the window as rendered and (b) the window after an encode-decode round trip through the VAE of the given pipeline
(default: the shipped demo model's, which is the second H200 run's own VAE).

`--finetune-steps N` first continues the given VAE for N steps on 9-frame, 64x96 crops of a training world (seed 0,
half its videos with overlays): every crop that shows an overlay and as many clean ones
(`synthetic.mini_model.train_vae`, batch 2, lr 2e-4), with `--edge-weight` times `mini_model.edge_loss` added to
its loss: what more VAE training on overlaid frames, and the edge term, would change (a mini VAE trained from
scratch takes about 20 s a step on a CPU). Writes benchmarks/results/leakage_control.json.

    python benchmarks/leakage_control.py --videos 16                    # the demo model's VAE; 6 minutes on a CPU
    python benchmarks/leakage_control.py --videos 16 --finetune-steps 100 --edge-weight 1 \
        --out benchmarks/results/leakage_control_edge.json              # continued first (4 minutes more)
    python benchmarks/leakage_control.py --model /root/mini/p2ft/final --out OUT/leakage_control_run.json
        # a mini run's own VAE (any pipeline folder of it has the VAE): does that run's VAE carry the overlays?
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.core.media import read_video
from ophora.core.privacy import PrivacyConfig
from ophora.core.versions import versions
from ophora.evaluate.leakage import leakage_record
from ophora.synthetic.mini_model import train_vae
from ophora.synthetic.surgery_world import make_surgery_world

FRAMES = 17
CROP = (9, 64, 96)  # frames, height, width of the fine-tuning crops
FINETUNE = {"videos": 16, "overlay_share": 0.5, "seed": 0, "batch": 2, "lr": 2e-4}


def windows(world: Path) -> list[dict]:
    """Every phase span's middle window of FRAMES frames, with whether an overlay covers it."""
    truth = json.loads((world / "ground_truth.json").read_text())
    out = []
    for name, video in truth["videos"].items():
        frames, fps = read_video(world / video["video"])
        for span in video["phases"]:
            middle = round((span["start"] + span["end"]) / 2 * fps)
            first = max(0, min(len(frames) - FRAMES, middle - FRAMES // 2))
            window = frames[first:first + FRAMES]
            t0, t1 = first / fps, (first + FRAMES) / fps
            covered = [o["kind"] for o in video["overlays"] if o["start"] <= t0 and o["end"] >= t1]
            if span["overlay"] and not covered:
                continue  # the overlay covers only part of this window: neither clean nor overlaid
            out.append({"video": name, "phase": span["phase"], "overlay": covered[0] if covered else "",
                        "frames": window, "fps": fps})
    return out


@torch.no_grad()
def round_trip(vae, frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) -> the VAE's reconstruction, uint8 (F, H, W, 3), as the sampler decodes latents."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    latents = vae.encode(x).latent_dist.mode()
    video = vae.decode(latents).sample[0].clamp(-1, 1)
    return ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def overlay_crops(world: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """CROP-sized crops of the world's non-overlapping windows (a 2 x 3 grid of overlapping crops per window):
    (those that show an overlay throughout, the others)."""
    truth = json.loads((world / "ground_truth.json").read_text())
    frames, h, w = CROP
    shown, clean = [], []
    for video in truth["videos"].values():
        decoded, fps = read_video(world / video["video"])
        for i in range(0, len(decoded) - frames + 1, frames):
            t0, t1 = i / fps, (i + frames) / fps
            for y in (0, decoded.shape[1] - h):
                for x in np.linspace(0, decoded.shape[2] - w, 3).round().astype(int):
                    hit = any(o["start"] <= t0 and o["end"] >= t1 and o["box"][0] < x + w and o["box"][2] > x
                              and o["box"][1] < y + h and o["box"][3] > y for o in video["overlays"])
                    (shown if hit else clean).append(decoded[i:i + frames, y:y + h, x:x + w])
    return shown, clean


def finetune(vae, steps: int, edge_weight: float, folder: Path) -> dict:
    """Fine-tune `vae` in place on the crops of a training world (see the module docstring); returns a record."""
    world = make_surgery_world(folder, videos=FINETUNE["videos"], size=(192, 128), fps=8.0,
                               overlay_share=FINETUNE["overlay_share"], seed=FINETUNE["seed"])
    shown, clean = overlay_crops(world)
    rng = np.random.default_rng(0)
    clean = [clean[i] for i in sorted(rng.choice(len(clean), min(len(clean), len(shown)), replace=False))]
    crops = torch.from_numpy(np.stack(shown + clean)).permute(0, 4, 1, 2, 3).contiguous()
    torch.manual_seed(0)  # the posterior draws
    start = time.perf_counter()
    losses = train_vae(vae, crops, steps, FINETUNE["batch"], FINETUNE["lr"], torch.device("cpu"), seed=0,
                       edge_weight=edge_weight)
    return {**FINETUNE, "steps": steps, "edge_weight": edge_weight, "crop": list(CROP), "crops_with_overlay": len(shown), "clean_crops": len(clean),
            "first_loss": losses[0], "last_loss": losses[-1], "seconds": round(time.perf_counter() - start, 1)}


def rates(records: list[dict], key: str) -> dict:
    """Share of flagged windows among the overlaid ones, per overlay kind, and among the clean ones."""
    out = {}
    for kind in sorted({r["overlay"] for r in records}):
        group = [r for r in records if r["overlay"] == kind]
        out[kind or "clean"] = {"windows": len(group), "flagged": sum(bool(r[key]) for r in group),
                                "rate": round(sum(bool(r[key]) for r in group) / len(group), 3)}
    return out


def report(args: argparse.Namespace, tuned: dict | None, records: list[dict], seconds: float) -> dict:
    """The results so far, written to args.out."""
    record = {"question": __doc__.split("\n\n")[0], "model": args.model, "vae_finetune": tuned,
              "world": {"videos": args.videos,
              "seed": args.seed, "size": "192x128", "fps": 8.0, "overlay_share": 1.0},
              "window_frames": FRAMES, "detector": "ophora.evaluate.leakage.leakage_record, PrivacyConfig()",
              "rendered": rates(records, "rendered_reason"), "after_vae": rates(records, "vae_reason"),
              "windows": records, "seconds": round(seconds, 1), "machine": platform.machine(),
              "command": " ".join(["python", "benchmarks/leakage_control.py", *sys.argv[1:]]),
              "versions": versions("diffusers")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "src" / "ophora" / "demo_model"),
                        help="pipeline folder whose vae/ is used (default: the shipped demo model)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7, help="world seed (the mini run trained on seed 0)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="first fine-tune the VAE this many steps "
                        "on crops of a training world (see above; default 0: the VAE as it is)")
    parser.add_argument("--edge-weight", type=float, default=0.0, help="weight of the edge term "
                        "(mini_model.edge_loss) in the fine-tuning loss (default 0: L1 + MSE + KL only)")
    parser.add_argument("--vae-out", type=Path, help="also write the fine-tuned VAE to VAE_OUT/vae (a later run "
                        "takes it with --model VAE_OUT)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "leakage_control.json")
    args = parser.parse_args()
    from diffusers import AutoencoderKLCogVideoX

    start = time.perf_counter()
    vae = AutoencoderKLCogVideoX.from_pretrained(Path(args.model) / "vae", torch_dtype=torch.float32).eval()
    config = PrivacyConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tuned = finetune(vae, args.finetune_steps, args.edge_weight,
                                                 Path(tmp) / "training_world") if args.finetune_steps else None
        if tuned and args.vae_out:
            vae.save_pretrained(args.vae_out / "vae", safe_serialization=True)
        world = make_surgery_world(Path(tmp) / "world", videos=args.videos, size=(192, 128), fps=8.0,
                                   overlay_share=1.0, seed=args.seed)
        records = []
        for w in windows(world):
            rendered = leakage_record(w["frames"], w["fps"], config)["reason"]
            decoded = leakage_record(round_trip(vae, w["frames"]), w["fps"], config)["reason"]
            records.append({"video": w["video"], "phase": w["phase"], "overlay": w["overlay"],
                            "rendered_reason": rendered, "vae_reason": decoded})
            print(f"{w['video']} {w['phase']}: overlay {w['overlay'] or '-'}, rendered {rendered or '-'}, "
                  f"after the VAE {decoded or '-'}", flush=True)
            record = report(args, tuned, records, time.perf_counter() - start)  # after every window: a stopped run keeps them
    print(json.dumps({"rendered": record["rendered"], "after_vae": record["after_vae"]}, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
