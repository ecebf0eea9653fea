"""Learning check: does the trainer learn, and does the sampler then reproduce what was learned?

Prepares the real Cataract-1K clips in ../shared/data/real/cataract1k_clips (each with its own instruction)
with a randomly initialised CogVideoX pipeline (`make_random_model(size=...)`), trains on them with the ophora
trainer, and reports (1) the loss falling and (2) the relative error between latents sampled from each
clip's instruction and that clip's training latents, before and after training. Writes learning_check.json
and learning_check.png (loss curve) to --out (default $OUT). Runs on the CPU at toy scale in a few minutes.

    python benchmarks/learning_check.py [--size small] [--steps 800] [--height 96 --width 128 --frames 17]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.core.latent_cache import load_clip, read_cache_info, read_index  # noqa: E402
from ophora.prepare.run import PrepareConfig, prepare  # noqa: E402
from ophora.core.models import load_pipeline  # noqa: E402
from ophora.synthetic.random_pipeline import make_random_model  # noqa: E402
from ophora.train.config import TrainConfig  # noqa: E402
from ophora.train.trainer import train  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cataract1k_clips"
INSTRUCTIONS = [
    "Insert the folded intraocular lens into the capsular bag with the injector.",
    "Rotate and position the intraocular lens haptics inside the capsular bag.",
]


def write_dataset(folder: Path, clips: list[Path]) -> Path:
    """An Ophora-160K-layout dataset whose clips link to the real files (nothing is copied)."""
    (folder / "clips").mkdir(parents=True)
    lines = ["clip id,instruction"]
    for i, clip in enumerate(clips):
        (folder / "clips" / f"cataract1k_{i}.mp4").symlink_to(clip.resolve())
        lines.append(f"cataract1k_{i},{INSTRUCTIONS[i % len(INSTRUCTIONS)]}")
    (folder / "instructions.csv").write_text("\n".join(lines) + "\n")
    return folder


def sampled_latent_errors(model: str, cache: Path, steps: int, device: str) -> list[float]:
    """For each cached clip: ||sampled - training latents|| / ||training latents||, sampling from its instruction."""
    pipe = load_pipeline(model, device=device, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    scaling = read_cache_info(cache)["vae_scaling_factor"]
    errors = []
    for entry in read_index(cache):
        target = (load_clip(cache / entry.file)["latent_mean"] * scaling).permute(1, 0, 2, 3)  # (F, C, H, W)
        f, _, h, w = target.shape
        latents = pipe(prompt=entry.instruction, num_frames=(f - 1) * 4 + 1, height=h * 8, width=w * 8,
                       num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).frames[0].float().cpu()
        errors.append(float((latents - target).norm() / target.norm()))
    return errors


def plot_loss(losses: list[float], path: Path) -> None:
    """A loss curve (raw and 20-step moving average) as a PNG, drawn with PIL."""
    from PIL import Image, ImageDraw

    width, height, pad = 800, 400, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    values = np.log10(np.asarray(losses))
    smooth = np.convolve(values, np.ones(20) / 20, mode="valid") if len(values) >= 20 else values
    lo, hi = values.min(), values.max()

    def xy(i: float, v: float) -> tuple[float, float]:
        return pad + i / max(1, len(values) - 1) * (width - 2 * pad), height - pad - (v - lo) / (hi - lo or 1) * (height - 2 * pad)

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    draw.line([xy(i, v) for i, v in enumerate(values)], fill=(160, 190, 230), width=1)
    draw.line([xy(i + (len(values) - len(smooth)) / 2, v) for i, v in enumerate(smooth)], fill=(200, 30, 30), width=3)
    draw.text((pad, 15), f"training loss (log10), {len(values)} steps; red: 20-step mean", fill="black")
    draw.text((pad, height - pad + 10), f"step 1 .. {len(values)}    log10 loss {lo:.2f} .. {hi:.2f}", fill="black")
    img.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--size", choices=["tiny", "small"], default="small", help="random model size (make_random_model)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--frames", type=int, default=17, help="frame bucket (4k+1); the short real clip has 27 frames")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--mixed-precision", default="bf16" if torch.cuda.is_available() else "no")
    p.add_argument("--clips", type=Path, default=REAL, help="folder of the real clips (default: ../shared/data/real/...)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    clips = sorted(a.clips.glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no real clips at {a.clips}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_random_model(tmp / "model", size=a.size)
        dataset = write_dataset(tmp / "dataset", clips)
        cache = tmp / "cache"
        t0 = time.perf_counter()
        prepare(PrepareConfig(dataset=dataset, model=str(model), out=cache, frame_buckets=(a.frames,),
                              heights=(a.height,), widths=(a.width,)))
        before = sampled_latent_errors(str(model), cache, a.sample_steps, device)
        t1 = time.perf_counter()
        config = TrainConfig(model=str(model), cache=str(cache), out=str(tmp / "run"), steps=a.steps, learning_rate=a.lr,
                             warmup_steps=min(50, a.steps // 10), batch_size=1, num_workers=0,
                             mixed_precision=a.mixed_precision, gradient_checkpointing=False, posterior_draws=False,
                             timestep_sampling="uniform", log_every=10, checkpoint_every=10**9, keep_checkpoints=1)
        run = train(config)
        t2 = time.perf_counter()
        after = sampled_latent_errors(str(run / "final"), cache, a.sample_steps, device)
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        entries = [e.clip_id for e in read_index(cache)]
    k = max(1, len(losses) // 10)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "clips": [c.name for c in clips], "clip_ids": entries, "model_size": a.size, "steps": a.steps, "lr": a.lr,
        "frames": a.frames, "height": a.height, "width": a.width, "sample_steps": a.sample_steps,
        "loss_first_10pct": float(np.mean(losses[:k])), "loss_last_10pct": float(np.mean(losses[-k:])),
        "rel_error_before": before, "rel_error_after": after,
        "train_seconds": t2 - t1, "prepare_and_sample_seconds": t1 - t0, "losses": losses,
        "command": " ".join(sys.argv),
    }
    (out / "learning_check.json").write_text(json.dumps(result, indent=1))
    plot_loss(losses, out / "learning_check.png")
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=1))


if __name__ == "__main__":
    main()
