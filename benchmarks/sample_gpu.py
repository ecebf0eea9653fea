"""Time full `ophora sample` generations at the published CogVideoX-2b size against stock diffusers, per mode.

Random weights (speed does not depend on their values), 49 frames at 480x720, 50 DPM steps, CFG 6 with
dynamic CFG, VAE decode included. Run it in the same command as the stock reference:

    python ../shared/bench/stock_cogvideox.py --parts pipe --out $OUT
    python benchmarks/sample_gpu.py --stock $OUT/stock.json --out $OUT

Modes (`--modes`): `exact` is `ophora sample`'s GPU default (ophora's attention processor with the fastest
exact kernel: FlashAttention-3 on Hopper when fa3-fwd is installed, else SDPA); `exact-compiled` adds
`--compile`; `fp8-compiled` is the opt-in fast mode (`--attention fp8 --compile`); `sdpa` is ours with the
stock kernel. Each mode is timed end to end (text encoding, 50 steps, decode to uint8 frames) after a
2-step warm-up that also pays any compiling (reported as `warmup_s`).

Quality: the same generation (same seed) is run at `--check-size` (default 49x240x368: a full-precision
reference at 480x720 would take minutes a step) by every mode, by the stock pipeline in bf16 (its own
processor, SDPA's default backend), by the stock pipeline under SDPA's flash backend, and in fp32 (the same
weights, fp32 activations, TF32 off) as the reference. Per mode: `latent_rel_l2` = final latents' relative L2
error against fp32, `psnr_vs_fp32_db` = decoded frames against fp32's, `psnr_vs_stock_db` = against the stock
bf16 pipeline's; fast modes also against `exact`. `--tiny` runs a toy size on the CPU to check the script.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

try:
    import av  # noqa: F401
    HAVE_AV = True
except ImportError:  # the GPU machine has no PyAV and its wheel does not fit beside fa3-fwd: skip mp4 writing
    import importlib.abc
    import importlib.machinery

    class _Anything(type):
        def __getattr__(cls, name):
            return cls

    class _Placeholder(metaclass=_Anything):
        pass

    class _StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Placeholder

    class _StubAv(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """`av` and every `av.x.y` as empty placeholder modules, so ophora's media module imports."""

        def find_spec(self, name, path=None, target=None):
            if name == "av" or name.startswith("av."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return _StubModule(spec.name)

        def exec_module(self, module):
            module.__path__ = []

    sys.modules.pop("av", None)
    sys.meta_path.insert(0, _StubAv())
    HAVE_AV = False

from ophora.core.media import to_uint8, write_video  # noqa: E402
from ophora.core.models import make_scheduler  # noqa: E402
from ophora.sample import speed  # noqa: E402
from ophora.sample.config import SampleConfig  # noqa: E402
from ophora.sample.generate import configure_pipeline, generate  # noqa: E402
from ophora.sample.jobs import plan_jobs  # noqa: E402
from ophora.synthetic.random_pipeline import random_pipeline, train_tokenizer  # noqa: E402

MODES = {
    "exact": {},
    "sdpa": {"attention": "sdpa"},
    "exact-compiled": {"compile": True},
    "fp8-compiled": {"attention": "fp8", "compile": True},
}
FAST = ("fp8-compiled",)


def build_pipeline(tiny: bool, device: str):
    """A random pipeline at CogVideoX-2b size (or tiny), in fp32, with a one-layer T5 of T5-XXL's width: T5-XXL
    encodes two prompts in milliseconds, and one layer of its width keeps the embedding shape exact."""
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    train_tokenizer(folder)
    pipe = random_pipeline("tiny" if tiny else "2b", folder, device=device).to(device)
    for part in (pipe.text_encoder, pipe.transformer, pipe.vae):
        part.eval()  # built, not loaded: modules start in training mode (T5's dropout would make runs differ)
    return pipe


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def parse_size(text: str) -> tuple[int, int, int]:
    f, h, w = (int(v) for v in text.lower().split("x"))
    return f, h, w


def check_run(pipe, config: SampleConfig, size, seed: int, device: str):
    """Final latents (fp32) and decoded uint8 frames of one generation at `size`."""
    f, h, w = size
    with torch.no_grad():
        latents = pipe(prompt=config.prompt, height=h, width=w, num_frames=f, num_inference_steps=config.steps,
                       guidance_scale=config.guidance, use_dynamic_cfg=config.dynamic_cfg, output_type="latent",
                       generator=torch.Generator(device).manual_seed(seed)).frames
        video = pipe.decode_latents(latents)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
    return latents.float(), to_uint8(frames)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--stock", default=None, help="stock.json written by stock_cogvideox.py in the same run")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--modes", default="exact,exact-compiled,fp8-compiled", help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--check-size", default=None, help="FxHxW of the quality check (default 49x240x368; tiny 9x64x64)")
    p.add_argument("--no-check", action="store_true", help="timings only")
    p.add_argument("--compile-cache", default=None, help="torch.compile cache artifacts to load first and save after")
    a = p.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    modes.sort(key=lambda m: bool(MODES[m].get("compile")))  # compiled blocks stay compiled: those last
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    h, w, f = (64, 64, 9) if a.tiny else (480, 720, 49)
    check = parse_size(a.check_size or ("9x64x64" if a.tiny else "49x240x368"))
    out = Path(tempfile.mkdtemp())
    base = SampleConfig(model="random CogVideoX-2b size", out=out, prompt="Polish the posterior capsule gently.",
                        steps=a.steps, frames=f, height=h, width=w, step_progress=False, dtype="bf16")
    job = plan_jobs([("prompt", base.prompt)], 1, base.seed)[0]
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "size": f"{f}x{h}x{w}", "steps": a.steps, "scheduler": base.scheduler, "check_size": "x".join(map(str, check))}
    if a.compile_cache and Path(a.compile_cache).is_file():
        t0 = time.perf_counter()
        torch.compiler.load_cache_artifacts(Path(a.compile_cache).read_bytes())
        res["compile_cache_loaded_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pipe = build_pipeline(a.tiny, device)
    pipe.scheduler = make_scheduler(base.scheduler, pipe.scheduler.config)  # CogVideoX-2b's sampler, as stock
    pipe.set_progress_bar_config(disable=True)
    reference = None
    if not a.no_check:  # the fp32 reference: the same (bf16-rounded) weights, fp32 activations
        pipe.to(dtype)
        reference = copy.deepcopy(pipe).to(torch.float32)
    pipe.to(dtype)
    res["build_s"] = time.perf_counter() - t0

    quality = {}
    if reference is not None:
        ref_latents, ref_frames = check_run(reference, base, check, job.seed, device)
        del reference
        if device == "cuda":
            torch.cuda.empty_cache()
        stock_latents, stock_frames = check_run(pipe, base, check, job.seed, device)
        res["stock_latent_rel_l2"] = rel_l2(stock_latents, ref_latents)
        res["stock_psnr_vs_fp32_db"] = psnr(stock_frames, ref_frames)
        if device == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):  # T5 (masked) takes math
                flash_latents, flash_frames = check_run(pipe, base, check, job.seed, device)
            res["stock_flash_backend_latent_rel_l2"] = rel_l2(flash_latents, ref_latents)
            res["stock_flash_backend_psnr_vs_fp32_db"] = psnr(flash_frames, ref_frames)
            res["stock_flash_vs_stock_latent_rel_l2"] = rel_l2(flash_latents, stock_latents)
        print({k: v for k, v in res.items() if k.startswith("stock_")}, flush=True)

    pipe = configure_pipeline(pipe, base, device)
    res["vae_tiled"] = bool(pipe.vae.use_tiling)
    decode_times: list[float] = []
    plain_decode = pipe.decode_latents

    def timed_decode(latents):
        sync(device)
        t = time.perf_counter()
        video = plain_decode(latents)
        sync(device)
        decode_times.append(time.perf_counter() - t)
        return video

    pipe.decode_latents = timed_decode
    res["modes"] = []
    for name in modes:
        config = dataclasses.replace(base, **MODES[name])
        kernel = speed.configure_speed(pipe, config.attention, config.compile, device)
        entry = {"name": name, "options": MODES[name], "kernel": kernel,
                 "compiled": bool(config.compile and device == "cuda")}
        sync(device)
        t0 = time.perf_counter()
        generate(pipe, dataclasses.replace(config, steps=2), job, device)  # compiling, cuDNN/cuBLAS heuristics
        sync(device)
        entry["warmup_s"] = time.perf_counter() - t0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        decode_times.clear()
        sync(device)
        t0 = time.perf_counter()
        frames = generate(pipe, config, job, device)
        sync(device)
        entry["ours_s"] = time.perf_counter() - t0
        entry["decode_s"] = decode_times[-1]
        entry["denoise_s"] = entry["ours_s"] - entry["decode_s"]
        if device == "cuda":
            entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if name == modes[0] and HAVE_AV:
            t0 = time.perf_counter()
            write_video(out / "video.mp4", frames, fps=config.fps or 8)
            res["encode_mp4_s"] = time.perf_counter() - t0
        if not a.no_check:
            t0 = time.perf_counter()
            latents, check_frames = check_run(pipe, config, check, job.seed, device)
            entry["check_s"] = time.perf_counter() - t0  # includes compiling for the check size
            quality[name] = (latents, check_frames)
            entry["latent_rel_l2"] = rel_l2(latents, ref_latents)
            entry["psnr_vs_fp32_db"] = psnr(check_frames, ref_frames)
            entry["psnr_vs_stock_db"] = psnr(check_frames, stock_frames)
            entry["latent_rel_l2_vs_stock"] = rel_l2(latents, stock_latents)
            if name in FAST and "exact" in quality:
                entry["latent_rel_l2_vs_exact"] = rel_l2(latents, quality["exact"][0])
                entry["psnr_vs_exact_db"] = psnr(check_frames, quality["exact"][1])
        res["modes"].append(entry)
        print(json.dumps(entry), flush=True)

    if a.stock:
        stock = json.loads(Path(a.stock).read_text())
        res["stock_tiled_s"] = stock["pipe_tiled_denoise_s"] + stock["pipe_tiled_vae_decode_s"]
        res["stock_untiled_s"] = stock["pipe_untiled_denoise_s"] + stock["pipe_untiled_vae_decode_s"]
        res["stock_s"] = res["stock_tiled_s"]  # the paper's and the authors' setting: VAE slicing + tiling
        res["stock_peak_gib"] = stock.get("pipe_tiled_peak_gib")
        for entry in res["modes"]:
            entry["speedup_vs_stock"] = res["stock_s"] / entry["ours_s"]
            entry["speedup_vs_stock_untiled"] = res["stock_untiled_s"] / entry["ours_s"]
        res["stock_reference"] = stock
    if a.compile_cache and device == "cuda" and any(MODES[m].get("compile") for m in modes):
        blob, _ = torch.compiler.save_cache_artifacts()
        Path(a.out, Path(a.compile_cache).name).write_bytes(blob)
    res["command"] = ("python .gpu/stock_cogvideox.py --parts pipe --out $OUT && python benchmarks/sample_gpu.py "
                      f"--stock $OUT/stock.json --out $OUT --modes {','.join(modes)}")
    print(json.dumps(res, indent=1))
    Path(a.out, "sample_gpu.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
