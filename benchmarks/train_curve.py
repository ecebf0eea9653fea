"""Loss curve of the trainer over 200 steps on the real Cataract-1K frames: the bf16 path against the fast path.

Data: the 128 JPEG frames of ../shared/data/real/cataract1k_iol_sequence (one Cataract-1K case during lens
implantation, every 5th source frame, 512x384; 5.9 MB, the only files read), cut into consecutive windows of
--frames frames, resized and centre-cropped by prepare's `resize_and_crop` and encoded to VAE posteriors by
prepare's `encode_videos` with an AutoencoderKLCogVideoX at the published CogVideoX-2b config, randomly
initialised (seed 0): the latents are a fixed function of the real frames, not CogVideoX's latent space. Each
window has one fixed random prompt embedding (226 x 4096, seeded), as no T5-XXL is carried. The transformer
has the CogVideoX-2b size, random init with seed 0, the same in every run.

Runs, one after the other in this process, each a fresh model trained with the trainer's own pieces
(`diffusion_loss`, `make_optimizer`, `make_lr_scheduler`, `configure_blocks`, `apply_fp8_linears`; accelerate
bf16 with fp32 master weights, clipping 1.0, AdamW, lr 1e-4 with 20 warm-up steps then cosine):
  bf16       the stock-like path: every block checkpointed, no compilation, no fp8;
  fast       per-block torch.compile + selective checkpointing + fp8 linears when torchao and an SM89+ GPU are
             there (the JSON says whether they were);
  reference  the bf16 path again with another seed (`seed` 43 instead of 42: other posterior draws, noise and
             timesteps; the same data order).
bf16 and fast see the same windows in the same order and, per step, the same timestep, noise and posterior draw.

"Within noise", as computed: each curve is smoothed by a trailing mean over --window steps; the gap between
two curves is |a - b| / b of the smoothed values at every step with a full window. The noise reference is the
gap between the reference and bf16 curves: how far the curve moves when only the random draws change. The
verdict is "equal within noise" when the fast path's max and mean gap to bf16 are both at most the
reference's. Also reported: the per-step paired gap (same draws) and the curves' own scatter (the standard
error of a smoothed point, from the residuals around the smoothed bf16 curve).

Writes train_curve_<gpu>.json (rewritten every 10 steps, "complete": false until the end) and
train_curve_<gpu>.png to --out; stops a run when --budget-s seconds since the start have passed.

    python benchmarks/train_curve.py [--tiny] [--out DIR] [--steps 200] [--frames 17] [--budget-s 330]
    GPU, one call of about 6 minutes: cp -r ../shared/data/real/cataract1k_iol_sequence .gpu/ here, then
    PART=curve bash benchmarks/gpu_prepare.sh there, carrying .whl and .gpu/cataract1k_iol_sequence
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.prepare.encode import encode_videos  # noqa: E402
from ophora.prepare.frames import resize_and_crop  # noqa: E402
from ophora.train.blocks import configure_blocks  # noqa: E402
from ophora.train.config import TrainConfig  # noqa: E402
from ophora.train.fp8 import apply_fp8_linears, fp8_unavailable  # noqa: E402
from ophora.train.trainer import diffusion_loss, make_lr_scheduler, make_optimizer  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SEQUENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cataract1k_iol_sequence"
TINY_TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "text_embed_dim": 32,
                    "time_embed_dim": 32, "max_text_seq_length": 8}
TINY_VAE = {"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4, "layers_per_block": 1}
RUNS = {  # name: (seed, selective checkpointing + compile + fp8)
    "bf16": (42, False), "fast": (42, True), "reference": (43, False)}


def windows(folder: Path, frames: int, height: int, width: int, limit: int | None) -> tuple[list[np.ndarray], list[str]]:
    """Consecutive, non-overlapping windows of `frames` frames of the JPEG sequence, each (F, H, W, 3) uint8."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    if len(files) < frames:
        raise SystemExit(f"{folder} holds {len(files)} JPEG frames, fewer than --frames {frames}")
    images = [resize_and_crop(np.asarray(Image.open(f).convert("RGB")), height, width) for f in files]
    out = [np.stack(images[i:i + frames]) for i in range(0, len(images) - frames + 1, frames)][:limit]
    return out, [f.name for f in files[:len(out) * frames]]


def encode(clips: list[np.ndarray], tiny: bool) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    """VAE posteriors (mean, logvar), each (C, F', H/8, W/8) on the CPU, and the VAE's scaling factor."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    with torch.device(DEVICE):
        vae = AutoencoderKLCogVideoX(latent_channels=16, **(TINY_VAE if tiny else {})).eval()
    dtype = torch.bfloat16 if CUDA else torch.float32
    vae.to(dtype)
    posteriors = []
    for clip in clips:
        mean, logvar = encode_videos(vae, [clip], DEVICE, dtype)
        posteriors.append((mean[0].float().cpu(), logvar[0].float().cpu()))
    scaling = vae.config.scaling_factor
    del vae
    release()
    return posteriors, scaling


def release() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def train_run(name: str, seed: int, fast: bool, posteriors: list, prompts: list[torch.Tensor], order: list[int],
              scaling: float, a: argparse.Namespace, deadline: float, report) -> dict:
    """One run of `a.steps` steps (fewer when `deadline` passes); `report(result)` every 10 steps."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from ophora.synthetic.random_pipeline import SCHEDULER_CONFIG

    config = TrainConfig(model="-", cache="-", out="-", mixed_precision="bf16" if CUDA else "no", batch_size=1,
                         steps=a.steps, warmup_steps=min(20, a.steps // 10), seed=seed,
                         selective_checkpointing=fast, compile_blocks=fast and a.compile, fp8_linears=fast)
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not CUDA)
    torch._dynamo.reset()
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = CogVideoXTransformer3DModel(**(TINY_TRANSFORMER if a.tiny else {})).train()
    fp8_layers = apply_fp8_linears(model, config.fp8_linears)
    configure_blocks(model, True, config.checkpoint_blocks, config.selective_checkpointing, config.compile_blocks)
    params, model_config = list(model.parameters()), model.config
    optimizer = make_optimizer(params, config)
    lr_scheduler = make_lr_scheduler(optimizer, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    noise_scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    result = {"seed": seed, "selective_checkpointing": config.selective_checkpointing,
              "compile_blocks": config.compile_blocks, "fp8_linears": fp8_layers,
              "fp8_note": None if not fast else (fp8_unavailable() or f"{fp8_layers} linear layers in float8"),
              "losses": [], "step_s": [], "stopped_by_budget": False}
    for step in range(a.steps):
        if time.monotonic() > deadline:
            result["stopped_by_budget"] = True
            break
        start = time.perf_counter()
        mean, logvar = posteriors[order[step]]
        batch = {"latent_mean": mean[None], "latent_logvar": logvar[None], "prompt_embeds": prompts[order[step]][None],
                 "positions": torch.tensor([0]), "micro_step": torch.tensor(step)}
        loss = diffusion_loss(model, noise_scheduler, batch, config, scaling, 1, 1, model_config)
        value = loss.item()  # synchronises, so the step time below is the step's own
        if math.isfinite(value):
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        else:  # as the trainer does: no update from a non-finite loss
            result["skipped_steps"] = result.get("skipped_steps", 0) + 1
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()
        result["losses"].append(value)  # NaN stays NaN: its gaps are NaN and the verdict is "NOT within noise"
        result["step_s"].append(time.perf_counter() - start)
        if (step + 1) % 10 == 0:
            report({**summary(result), "peak_gib": peak()})
    out = {**summary(result), "peak_gib": peak()}
    del model, optimizer, lr_scheduler, params
    accelerator.free_memory()
    torch._dynamo.reset()  # compiled code holds the model's parameters
    release()
    print(f"{name}: {len(out['losses'])} steps, median step {out['median_step_s']} s, peak {out['peak_gib']} GiB, "
          f"losses {out['losses'][:1]} ... {out['losses'][-1:]}", flush=True)
    return out


def summary(result: dict) -> dict:
    times = result["step_s"][10:] or result["step_s"]
    return {**result, "median_step_s": round(float(np.median(times)), 4) if times else None}


def peak() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` steps (fewer at the start)."""
    sums = np.cumsum([0.0, *values])
    return [float((sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1)) for i in range(len(values))]


def gap(a: list[float], b: list[float], window: int) -> dict | None:
    """Max and mean of |a - b| / b over the steps both smoothed curves have with a full window."""
    n = min(len(a), len(b))
    if n < window:
        return None
    sa, sb = np.array(smooth(a[:n], window)[window - 1:]), np.array(smooth(b[:n], window)[window - 1:])
    rel = np.abs(sa - sb) / np.abs(sb)
    return {"max": float(rel.max()), "mean": float(rel.mean()), "steps": n}


def analyse(runs: dict, window: int) -> dict:
    """Smoothed curves, gaps, the noise reference and the verdict (as the module docstring defines them)."""
    losses = {name: run["losses"] for name, run in runs.items()}
    res: dict = {"smoothed": {name: smooth(v, window) for name, v in losses.items()}}
    if "bf16" not in losses:
        return res
    bf16 = losses["bf16"]
    if len(bf16) >= window:
        s = np.array(smooth(bf16, window))
        res["scatter"] = {"residual_std": float(np.std(np.array(bf16[window - 1:]) - s[window - 1:])),
                          "standard_error_of_smoothed_point": float(np.std(np.array(bf16[window - 1:]) - s[window - 1:])
                                                                    / np.sqrt(window))}
    fast = gap(losses.get("fast", []), bf16, window)
    ref = gap(losses.get("reference", []), bf16, window)
    res["gap_fast_vs_bf16"], res["gap_reference_vs_bf16"] = fast, ref
    if "fast" in losses:
        n = min(len(bf16), len(losses["fast"]))
        paired = np.abs(np.array(losses["fast"][:n]) - np.array(bf16[:n])) / np.abs(np.array(bf16[:n]))
        res["paired_step_gap_fast_vs_bf16"] = {"max": float(paired.max()), "mean": float(paired.mean())} if n else None
    if fast and ref:
        res["within_noise"] = fast["max"] <= ref["max"] and fast["mean"] <= ref["mean"]
        res["verdict"] = (f"fast vs bf16 smoothed gap max {fast['max']:.3f} mean {fast['mean']:.3f}; noise reference "
                          f"(another seed) max {ref['max']:.3f} mean {ref['mean']:.3f}: "
                          + ("equal within noise" if res["within_noise"] else "NOT within noise"))
    return res


def plot(runs: dict, smoothed: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:gray"), strict=False):
        ax.plot(run["losses"], color=color, alpha=0.2, lw=0.8)
        ax.plot(smoothed[name], color=color, lw=2, label=f"{name} (seed {run['seed']})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (CogVideoX weighted v-loss)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy model and frames, no compilation: runs on the CPU")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--data", type=Path, default=SEQUENCE, help="folder of the JPEG frame sequence")
    p.add_argument("--steps", type=int)
    p.add_argument("--frames", type=int, help="frames per window (8k+1; default 17, tiny 9)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--window", type=int, help="smoothing window in steps (default 20, tiny 5)")
    p.add_argument("--budget-s", type=float, default=330.0, help="stop training runs this many seconds after the start")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="fast path without torch.compile")
    a = p.parse_args()
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    a.steps = a.steps or (12 if a.tiny else 200)
    a.frames, a.window = a.frames or (9 if a.tiny else 17), a.window or (4 if a.tiny else 20)
    a.height, a.width = a.height or (48 if a.tiny else 384), a.width or (64 if a.tiny else 512)
    if a.tiny:
        a.compile = False  # inductor's CPU compilation alone would take minutes here
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    clips, files = windows(a.data, a.frames, a.height, a.width, 3 if a.tiny else None)
    posteriors, scaling = encode(clips, a.tiny)
    text, width = (8, 32) if a.tiny else (226, 4096)
    prompts = [torch.randn(text, width, generator=torch.Generator().manual_seed(100 + i)) for i in range(len(clips))]
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(clips)) for _ in range(a.steps // len(clips) + 1)]).tolist()
    encoded_s = time.monotonic() - started

    name = "tiny" if a.tiny else next((g for g in ("h200", "h100") if g in torch.cuda.get_device_name().lower()), "gpu") \
        if CUDA else "cpu"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_curve_{name}.json"
    head = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
        "command": " ".join(sys.argv), "complete": False,
        "size": "tiny" if a.tiny else "CogVideoX-2b transformer (random init, seed 0)",
        "data": {"source": str(a.data), "files": len(files), "first": files[0], "last": files[-1],
                 "windows": len(clips), "frames": a.frames, "height": a.height, "width": a.width,
                 "latent_shape": list(posteriors[0][0].shape), "encode_s": round(encoded_s, 1),
                 "vae": ("a tiny AutoencoderKLCogVideoX" if a.tiny else
                         "AutoencoderKLCogVideoX at the published CogVideoX-2b config") + ", random init (seed 0), via prepare's encode_videos: latents are a fixed function of the "
                          "real frames, not CogVideoX's latent space",
                 "prompt_embeds": f"one fixed random {text}x{width} embedding per window (seed 100+i); no T5 carried",
                 "order": "windows in shuffled epochs (seed 0), the same in every run"},
        "training": {"steps": a.steps, "batch": 1, "learning_rate": 1e-4, "warmup_steps": min(20, a.steps // 10),
                     "lr_schedule": "cosine_with_restarts (1 cycle)", "mixed_precision": "bf16" if CUDA else "no",
                     "max_grad_norm": 1.0, "optimizer": "AdamW (fused on GPU), betas 0.9/0.95, weight decay 1e-3"},
        "smoothing_window": a.window,
        "noise_reference": "gap (|a-b|/b of the trailing-mean smoothed curves) between the bf16 path with seed 43 "
                           "and with seed 42 (other posterior draws, noise and timesteps; same data order); the fast "
                           "path is 'equal within noise' when its max and mean gap to bf16 are both at most that",
    }
    runs: dict = {}

    def write(partial: dict | None = None, current: str | None = None) -> None:
        shown = {**runs, **({current: partial} if partial else {})}
        res = {**head, "runs": shown, **analyse(shown, a.window), "elapsed_s": round(time.monotonic() - started, 1)}
        path.write_text(json.dumps(res, indent=1))

    deadline = started + a.budget_s
    for run_name, (seed, fast) in RUNS.items():
        try:
            runs[run_name] = train_run(run_name, seed, fast, posteriors, prompts, order, scaling, a, deadline,
                                       lambda r, n=run_name: write(r, n))
        except Exception as exc:  # noqa: BLE001 -- one GPU call: a failing run is recorded, the others still run
            print(f"{run_name} failed: {type(exc).__name__}: {exc}", flush=True)
            runs[run_name] = {"seed": seed, "error": f"{type(exc).__name__}: {str(exc)[:2000]}", "losses": []}
            release()
        write()
    head["complete"] = all(len(r["losses"]) == a.steps for r in runs.values())
    write()
    res = json.loads(path.read_text())
    plot(runs, res["smoothed"], path.with_suffix(".png"),
         f"{head['size']}, {a.frames}x{a.height}x{a.width} Cataract-1K windows, {res['device']}\n"
         + res.get("verdict", "no verdict (a run is missing)"))
    print(res.get("verdict", "no verdict"), f"({res['elapsed_s']} s)", flush=True)


if __name__ == "__main__":
    main()
