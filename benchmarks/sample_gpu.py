"""Time one full `ophora sample` generation at the published CogVideoX-2b size against stock diffusers.

Random weights (speed does not depend on their values), 49 frames at 480x720, 50 DPM steps, CFG 6 with
dynamic CFG, VAE decode included. Run it in the same command as the stock reference:

    python ../shared/bench/stock_cogvideox.py --parts pipe --out $OUT
    python benchmarks/sample_gpu.py --stock $OUT/stock.json --out $OUT

It also decodes the same final latents with the stock (tiled) path and reports how far our frames are
from the stock pipeline's for the same seed (PSNR), so a speed-up is never bought with wrong output.
`--tiny` runs a toy size on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.synthetic.random_pipeline import random_pipeline, train_tokenizer  # noqa: E402
from ophora.core.media import to_uint8  # noqa: E402
from ophora.sample.config import SampleConfig  # noqa: E402
from ophora.sample.generate import configure_pipeline, generate  # noqa: E402
from ophora.sample.jobs import plan_jobs  # noqa: E402
from ophora.core.media import write_video  # noqa: E402


def build_pipeline(tiny: bool, device: str, dtype: torch.dtype):
    """A random pipeline at CogVideoX-2b size (or tiny), with a one-layer T5 of T5-XXL's width: T5-XXL
    encodes two prompts in milliseconds, and one layer of its width keeps the embedding shape exact."""
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    train_tokenizer(folder)
    return random_pipeline("tiny" if tiny else "2b", folder, device=device).to(device, dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--stock", default=None, help="stock.json written by stock_cogvideox.py in the same run")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    h, w, f = (64, 64, 9) if a.tiny else (480, 720, 49)
    out = Path(tempfile.mkdtemp())
    config = SampleConfig(model="random CogVideoX-2b size", out=out, prompt="Polish the posterior capsule gently.",
                          steps=a.steps, frames=f, height=h, width=w, step_progress=False)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    pipe = configure_pipeline(build_pipeline(a.tiny, device, dtype), config, device)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "size": f"{f}x{h}x{w}", "steps": a.steps, "vae_tiled": bool(pipe.vae.use_tiling),
           "fused_qkv": device == "cuda"}

    warm = dataclasses.replace(config, steps=2)
    generate(pipe, warm, job, device)  # cuDNN/cuBLAS heuristics and allocator warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    frames = generate(pipe, config, job, device)
    sync(device)
    res["ours_s"] = time.perf_counter() - t0
    if device == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    t0 = time.perf_counter()
    write_video(out / "video.mp4", frames, fps=config.fps)
    res["encode_mp4_s"] = time.perf_counter() - t0

    # Reference: the stock path (unfused attention, tiled + sliced VAE) for the same seed.
    if res["fused_qkv"]:
        pipe.transformer.unfuse_qkv_projections()
    pipe.vae.enable_tiling()
    pipe.vae.enable_slicing()
    ref = pipe(prompt=config.prompt, height=h, width=w, num_frames=f, num_inference_steps=a.steps,
               guidance_scale=config.guidance, use_dynamic_cfg=True, output_type="np",
               generator=torch.Generator(device).manual_seed(job.seed)).frames[0]
    res["psnr_vs_stock_path_db"] = psnr(frames, to_uint8(ref))

    if a.stock:
        stock = json.loads(Path(a.stock).read_text())
        res["stock_tiled_s"] = stock["pipe_tiled_denoise_s"] + stock["pipe_tiled_vae_decode_s"]
        res["stock_untiled_s"] = stock["pipe_untiled_denoise_s"] + stock["pipe_untiled_vae_decode_s"]
        res["stock_s"] = res["stock_tiled_s"]  # the paper's and the authors' setting: VAE slicing + tiling
        res["speedup_vs_stock"] = res["stock_s"] / res["ours_s"]
        res["speedup_vs_stock_untiled"] = res["stock_untiled_s"] / res["ours_s"]
        res["stock_peak_gib"] = stock.get("pipe_tiled_peak_gib")
    res["command"] = ("python .gpu/stock_cogvideox.py --parts pipe --out $OUT && "
                      "python benchmarks/sample_gpu.py --stock $OUT/stock.json --out $OUT")
    print(json.dumps(res, indent=1))
    Path(a.out, "sample_gpu.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
