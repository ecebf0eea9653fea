"""Positive control for the mini experiment's leakage figure: would `ophora evaluate` see an overlay that a model
reproduced as faithfully as its own VAE can?

The mini run's TPT videos had leakage rate 0, so P2FT had nothing to remove. Either TPT never learned to draw the
world's captions and watermarks, or the detector cannot see them once they pass through the mini model's VAE at
192x128. This script tells the two apart. On a fresh surgery world (another seed than the training world's) it
takes a 17-frame window from the middle of every phase span, with or without an overlay over it (the world's
ground truth), and scores with `evaluate.leakage.leakage_record` (the detector and settings `ophora evaluate`
uses) (a) the window as rendered and (b) the window after an encode-decode round trip through the VAE of the
given pipeline (default: the shipped demo model, i.e. the mini run's). Writes benchmarks/results/leakage_control.json.

    python benchmarks/leakage_control.py                   # 8 videos, about 35 windows; minutes on a CPU
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
from ophora.synthetic.surgery_world import make_surgery_world

FRAMES = 17


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


def rates(records: list[dict], key: str) -> dict:
    """Share of flagged windows among the overlaid ones, per overlay kind, and among the clean ones."""
    out = {}
    for kind in sorted({r["overlay"] for r in records}):
        group = [r for r in records if r["overlay"] == kind]
        out[kind or "clean"] = {"windows": len(group), "flagged": sum(bool(r[key]) for r in group),
                                "rate": round(sum(bool(r[key]) for r in group) / len(group), 3)}
    return out


def report(args: argparse.Namespace, records: list[dict], seconds: float) -> dict:
    """The results so far, written to args.out."""
    record = {"question": __doc__.split("\n\n")[0], "model": args.model, "world": {"videos": args.videos,
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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "leakage_control.json")
    args = parser.parse_args()
    from diffusers import AutoencoderKLCogVideoX

    start = time.perf_counter()
    vae = AutoencoderKLCogVideoX.from_pretrained(Path(args.model) / "vae", torch_dtype=torch.float32).eval()
    config = PrivacyConfig()
    with tempfile.TemporaryDirectory() as tmp:
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
            record = report(args, records, time.perf_counter() - start)  # after every window: a stopped run keeps them
    print(json.dumps({"rendered": record["rendered"], "after_vae": record["after_vae"]}, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
