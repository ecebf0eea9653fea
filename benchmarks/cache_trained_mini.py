"""Step caching on trained weights: ophora's `--cache` modes and cache-dit on the shipped mini model (CPU).

The H200 benchmark (`sample_gpu.py`) runs a random CogVideoX-2b, whose features change so much from step to step
that cache-dit and `fbc` never serve a step from their caches, so their speed and error, and how ophora's
`fixed` compares with them, cannot be judged there. The shipped demo model is a trained model of the CogVideoX
architecture (the mini experiment's P2FT model: 6 blocks, 128x192, 17 frames), so its features evolve as a
trained model's do. This script samples the twelve phase prompts with each mode at the same seeds (50 DPM
steps, the demo's guidance 1.0) and reports, per mode:

- `attention_share`: attention layers computed over those of exact sampling (counted at the kernel; this is the
  compute a mode saves, whatever the device);
- `latent_rel_l2` and `psnr_db` against exact sampling at the same seed (final latents; decoded frames);
- `phase_accuracy`: the share of videos whose phase `synthetic.phase_videos.colour_phase_classifier` recognises
  as the one the prompt names (exact sampling's is the reference; chance 1/12);
- for cache-dit, the steps it served from its cache.

Seconds on this CPU are reported but are not the point (the blocks are small here). Needs the `cache-dit`
package for its modes (skipped, and said so, without it). Writes benchmarks/results/cache_trained_mini.json.

    python benchmarks/cache_trained_mini.py [--modes ...] [--prompts 12] [--steps 50]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ophora.core.attention as attention_module  # noqa: E402
from ophora.core.models import load_pipeline, video_settings  # noqa: E402
from ophora.core.tables import slug  # noqa: E402
from ophora.demo import bundled  # noqa: E402
from ophora.sample.config import SampleConfig  # noqa: E402
from ophora.sample.generate import configure_pipeline, generate  # noqa: E402
from ophora.sample.jobs import Job  # noqa: E402
from ophora.synthetic.phase_videos import colour_phase_classifier  # noqa: E402
from sample_gpu import MODES, cache_dit_steps, sample_options, use_cache_dit  # noqa: E402

DEFAULT_MODES = ("exact,fixed,fixed-k2,fbc,taylorseer,pab,fastercache,cachedit-F8B0-taylorseer,cachedit-F8B8,"
                 "cachedit-fixed-F1B0")


class AttentionCounter:
    """Counts the attention kernel calls of ophora's processor (one per block and step that is computed)."""

    def __init__(self) -> None:
        self.calls = 0
        self._plain = attention_module.attention

    def __enter__(self) -> AttentionCounter:
        def counted(*args, **kwargs):
            self.calls += 1
            return self._plain(*args, **kwargs)

        attention_module.attention = counted
        return self

    def __exit__(self, *exc) -> None:
        attention_module.attention = self._plain


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity: identical frames (infinite PSNR) are reported as null."""
    return float(x) if np.isfinite(x) else None


def run_mode(name: str, model: Path, jobs: list[Job], steps: int) -> dict:
    """Every job with mode `name` on a freshly loaded pipeline: final latents, frames, attention calls, seconds."""
    pipe = load_pipeline(str(model), device="cpu", dtype=torch.float32, scheduler="dpm")
    config = SampleConfig(model=str(model), out=Path("."), prompt="-", steps=steps, guidance=1.0, compile=False,
                          **sample_options(name)).with_video(video_settings(model))  # 17x128x192, as trained
    configure_pipeline(pipe, config, "cpu")
    if "cache_dit" in MODES[name]:
        use_cache_dit(pipe, name, steps)
    latents: list[torch.Tensor] = []
    plain_decode = pipe.decode_latents
    pipe.decode_latents = lambda z: (latents.append(z.detach().clone()), plain_decode(z))[1]
    frames, cached = [], []
    start = time.perf_counter()
    with AttentionCounter() as counter:
        for job in jobs:
            frames.append(generate(pipe, config, job, "cpu"))
            if "cache_dit" in MODES[name]:
                cached.append(cache_dit_steps(pipe))
    return {"latents": latents, "frames": frames, "attention_calls": counter.calls, "cached": cached,
            "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=DEFAULT_MODES)
    p.add_argument("--prompts", type=int, default=12, help="how many of the twelve phase prompts")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cache_trained_mini.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    model = bundled("demo_model")
    rows = list(csv.DictReader((model / "prompts.csv").open()))[: a.prompts]
    jobs = [Job(clip_id=r["clip id"], n=0, prompt=r["instruction"], seed=a.seed + i) for i, r in enumerate(rows)]
    classify = colour_phase_classifier()
    modes = [m for m in a.modes.split(",") if m]
    if modes[0] != "exact":
        modes.insert(0, "exact")
    try:
        import cache_dit  # noqa: F401
        cache_dit_version = cache_dit.__version__
    except ImportError:
        cache_dit_version = None
        modes = [m for m in modes if "cache_dit" not in MODES[m]]
    res = {"model": "the shipped demo model (mini P2FT, 6 blocks, 17x128x192, float16 weights run in float32)",
           "device": f"cpu ({platform.processor() or platform.machine()}, 1 thread)", "steps": a.steps,
           "guidance": 1.0, "scheduler": "dpm", "prompts": len(jobs), "cache_dit": cache_dit_version or
           "not installed: its modes skipped", "modes": [], "command": "python benchmarks/cache_trained_mini.py " +
           " ".join(sys.argv[1:])}
    exact = None
    for name in modes:
        got = run_mode(name, model, jobs, a.steps)
        exact = exact or got
        entry = {"name": name, "options": MODES[name], "seconds": got["seconds"],
                 "attention_share": got["attention_calls"] / exact["attention_calls"],
                 "latent_rel_l2": float(np.mean([float((z - e).norm() / e.norm())
                                                 for z, e in zip(got["latents"], exact["latents"])])),
                 "psnr_db": finite_or_none(np.mean([psnr(f, e) for f, e in zip(got["frames"], exact["frames"])])),
                 "phase_accuracy": float(np.mean([slug(classify(f)) == slug(r["phase"])
                                                  for f, r in zip(got["frames"], rows)]))}
        if got["cached"]:
            entry["cache_dit_cached_steps"] = got["cached"]
        res["modes"].append(entry)
        print(json.dumps(entry), flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
