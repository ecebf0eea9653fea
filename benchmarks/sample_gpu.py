"""Time full `ophora sample` generations at the published CogVideoX-2b size against stock diffusers, per mode.

Random weights (speed does not depend on their values, except for the step caches that decide from the
features: fbc and cache-dit), 49 frames at 480x720, 50 DPM steps, CFG 6 with dynamic CFG, VAE decode
included. One invocation measures stock (`--stock inline`: diffusers' pipeline with its own processors, tiled
and untiled VAE, as ../shared/bench/stock_cogvideox.py --parts pipe does) and every mode asked for; each
invocation stays under 10 minutes with one of the two mode sets below, the second reusing the first's stock
timings and modes (`--stock FILE` with a sample_gpu JSON keeps its modes; the first call's JSON comes back
from $OUT and is copied to benchmarks/results/ before the second):

    python benchmarks/sample_gpu.py --stock inline --modes exact,exact-eager,fp8,fixed,fixed-k2,fp8-fixed --out $OUT
    python benchmarks/sample_gpu.py --stock benchmarks/results/sample_gpu_h200.json --out $OUT \
        --modes fbc,taylorseer,pab,fastercache,cachedit-F8B0-taylorseer,cachedit-F8B8,cachedit-fixed-F1B0

(`--stock FILE` also takes stock_cogvideox.py's stock.json.) Modes (`MODES`): `exact` is `ophora sample`'s GPU
default (FlashAttention-3 when fa3-fwd is installed, else SDPA, and the blocks compiled); `exact-eager` is that
without compiling, `sdpa-eager` ours with the stock kernel; `exact-vae-cl` adds the VAE decoder in channels-last
layout and `exact-vae-compiled` that compiled too (both change the VAE for good, so they come last); `fp8` FP8 attention; `fixed*`, `fbc`, `taylorseer`,
`pab`, `fastercache` are `--cache` modes; `cachedit-*` run cache-dit (pip package cache-dit, if importable) on
the same exact configuration, with the settings of its CogVideoX examples (DBCache F8B8, and F8B0 with its
TaylorSeer calibrator; its default threshold 0.08 and 8 warm-up steps) and, since with random weights its
threshold decides to skip nothing, once on ophora's `fixed` schedule (`cachedit-fixed-F1B0`: cache-dit's
`steps_computation_mask`, one block always computed, TaylorSeer order 1): both at equal compute, whatever the weights. Each mode is timed end to end (text
encoding, 50 steps, decode to uint8 frames) after a 2-step warm-up that also pays any compiling (`warmup_s`).

Quality: the same generation (same seed) is run at `--check-size` (default 49x240x368: a full-precision
reference at 480x720 would take minutes a step) by every mode, by the stock pipeline in bf16 (its own
processor, SDPA's default backend), by the stock pipeline under SDPA's flash backend, and in fp32 (the same
weights, fp32 activations, TF32 off) as the reference. Per mode: `latent_rel_l2` = final latents' relative L2
error against fp32, `psnr_vs_fp32_db` = decoded frames against fp32's, `psnr_vs_stock_db` = against the stock
bf16 pipeline's; inexact modes also against `exact`. With random weights these errors say how far a mode moves
the sample, not whether the video stays good: that needs trained weights. `--tiny` runs a toy size on the CPU.
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

from ophora.core.media import to_uint8, write_video
from ophora.core.models import make_scheduler
from ophora.core.vae_speed import speed_up_vae
from ophora.sample import speed
from ophora.sample.cache_spec import CacheSpec, full_steps
from ophora.sample.config import SampleConfig
from ophora.sample.generate import configure_pipeline, generate
from ophora.sample.jobs import plan_jobs
from ophora.synthetic.random_pipeline import random_pipeline, train_tokenizer

MODES = {
    "exact": {},
    "exact-eager": {"compile": False},
    "sdpa-eager": {"attention": "sdpa", "compile": False},
    "fp8": {"attention": "fp8"},
    # the VAE decoder's levers change the pipeline for good: these modes go last
    "exact-vae-cl": {"vae_channels_last": True},
    "exact-vae-compiled": {"vae_channels_last": True, "vae_compile": "on"},
    "fixed": {"cache": "fixed"},
    "fixed-k2": {"cache": "fixed", "cache_interval": 2},
    "fixed-k4": {"cache": "fixed", "cache_interval": 4},
    "fp8-fixed": {"attention": "fp8", "cache": "fixed"},
    "fbc": {"cache": "fbc"},
    "taylorseer": {"cache": "taylorseer"},
    "pab": {"cache": "pab"},
    "fastercache": {"cache": "fastercache"},
    "cachedit-F8B8": {"cache_dit": {"Fn_compute_blocks": 8, "Bn_compute_blocks": 8}},
    "cachedit-F8B0-taylorseer": {"cache_dit": {"Fn_compute_blocks": 8, "Bn_compute_blocks": 0}, "taylorseer": 1},
    # cache-dit on ophora's `fixed` schedule (its steps_computation_mask), one block always computed, TaylorSeer
    # order 1 (as `fixed`'s linear extrapolation): the two at equal compute, whatever the weights
    "cachedit-fixed-F1B0": {"cache_dit": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0,
                                          "steps_computation_policy": "static"}, "taylorseer": 1, "mask": "fixed"},
}
EXACT = ("exact", "exact-eager", "sdpa-eager", "exact-vae-cl", "exact-vae-compiled")
VAE_MODES = ("exact-vae-cl", "exact-vae-compiled")


def sample_options(name: str) -> dict:
    """The SampleConfig fields of a mode (cache-dit's settings are not ophora options)."""
    return {k: v for k, v in MODES[name].items() if k not in ("cache_dit", "taylorseer", "mask")}


def use_cache_dit(pipe, name: str, steps: int) -> None:
    """cache-dit's DBCache on the pipeline, with the mode's settings (CFG is one batch in CogVideoX)."""
    import cache_dit

    settings = MODES[name]
    blocks = len(pipe.transformer.transformer_blocks)  # the tiny model has 2: its Fn/Bn are cut to fit
    dbcache = {k: min(v, max(blocks // 2, 1) if k.startswith("Fn") else blocks // 2) if k[1:2] == "n" else v
               for k, v in settings["cache_dit"].items()}
    if settings.get("mask") == "fixed":
        spec = CacheSpec.make("fixed")
        full = set(full_steps(steps, spec.warmup, spec.interval))
        dbcache["steps_computation_mask"] = [int(i in full) for i in range(steps)]
    calibrator = (cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=settings["taylorseer"])
                  if settings.get("taylorseer") else None)
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(enable_separate_cfg=False, **dbcache),
                           calibrator_config=calibrator)


def cache_dit_steps(pipe) -> int | None:
    """How many steps cache-dit served from its cache in the last generation."""
    import cache_dit

    stats = cache_dit.summary(pipe, logging=False)
    return len(stats[0].cached_steps) if stats else None


def stock_timings(pipe, steps: int, size: tuple[int, int, int], device: str) -> dict:
    """Stock diffusers end to end, as stock_cogvideox.py --parts pipe: random prompt embeddings, untiled then
    tiled+sliced VAE, latents then decode."""
    f, h, w = size
    dim = pipe.transformer.config.text_embed_dim
    tokens = pipe.transformer.config.max_text_seq_length
    dtype = next(pipe.transformer.parameters()).dtype
    pe, ne = (torch.randn(1, tokens, dim, device=device, dtype=dtype) for _ in range(2))
    res = {}
    for tiling in (False, True):
        if tiling:
            pipe.vae.enable_tiling()
            pipe.vae.enable_slicing()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = dict(prompt_embeds=pe, negative_prompt_embeds=ne, height=h, width=w, num_frames=f, guidance_scale=6.0,
                   use_dynamic_cfg=True, output_type="latent")
        pipe(**run, num_inference_steps=2, generator=torch.Generator(device).manual_seed(0))  # cuDNN/cuBLAS warm-up
        sync(device)
        t0 = time.perf_counter()
        out = pipe(**run, num_inference_steps=steps, generator=torch.Generator(device).manual_seed(0)).frames
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            pipe.decode_latents(out)
        sync(device)
        key = "tiled" if tiling else "untiled"
        res[f"pipe_{key}_denoise_s"], res[f"pipe_{key}_vae_decode_s"] = t1 - t0, time.perf_counter() - t1
        if device == "cuda":
            res[f"pipe_{key}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    pipe.vae.disable_tiling()
    pipe.vae.disable_slicing()
    return res


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


def read_stock(path: Path) -> tuple[dict, list[dict]]:
    """Stock timings (stock_cogvideox.py's keys) and the modes already measured, from stock.json or a
    sample_gpu.json of an earlier invocation in the same run; in a results file whose runs (`runs`) each keep
    their stock, the run whose stock is the top-level one."""
    data = json.loads(path.read_text())
    runs = [r for r in data.get("runs", {}).values() if r.get("stock_tiled_s") == data.get("stock_s")]
    return data.get("stock_reference", runs[0]["stock_reference"] if runs else data), data.get("modes", [])


def check_modes(names: list[str]) -> str | None:
    """Why the modes cannot run (None when they can)."""
    unknown = [m for m in names if m not in MODES]
    if unknown:
        return f"unknown modes {unknown}; choose from {', '.join(MODES)}"
    vae = [i for i, m in enumerate(names) if m in VAE_MODES]
    if vae and vae != list(range(len(names) - len(vae), len(names))):
        return f"the modes {', '.join(VAE_MODES)} change the VAE for good: put them last"
    if any(m.startswith("cachedit") for m in names):
        try:
            import cache_dit  # noqa: F401
        except ImportError:
            return "cachedit modes need the cache-dit package (carry its wheel: README, GPU benchmarks)"
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--stock", default="inline", help="inline (measure it here), none, or stock.json / sample_gpu.json "
                                                     "of the same run (a sample_gpu.json's modes are kept)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--modes", default="exact,exact-eager,fp8,fixed,fixed-k2,fp8-fixed",
                   help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--check-size", default=None, help="FxHxW of the quality check (default 49x240x368; tiny 9x64x64)")
    p.add_argument("--no-check", action="store_true", help="timings only")
    p.add_argument("--compile-cache", default=None, help="torch.compile cache artifacts to load first and save after")
    a = p.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    problem = check_modes(modes)
    if problem:
        p.error(problem)
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
    earlier: list[dict] = []
    stock = None
    if a.stock not in ("inline", "none"):
        stock, earlier = read_stock(Path(a.stock))
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
    if a.stock == "inline":
        t0 = time.perf_counter()
        stock = {"device": res["device"], "measured": "inline, stock processors", **stock_timings(pipe, a.steps, (f, h, w), device)}
        print(json.dumps(stock), flush=True)
        res["stock_inline_s"] = time.perf_counter() - t0

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
    if not a.no_check and "exact" not in modes and any(m not in EXACT for m in modes):
        speed.configure_speed(pipe, base.attention, base.compile, device)  # the exact result, for the fast modes
        quality["exact"] = check_run(pipe, base, check, job.seed, device)
    res["modes"] = []
    for name in modes:
        config = dataclasses.replace(base, **sample_options(name))
        kernel = speed.configure_speed(pipe, config.attention, config.compile, device, config.cache_spec,
                                       config.guidance, config.steps)
        if name in VAE_MODES:
            speed_up_vae(pipe.vae, config.vae_channels_last, config.compiles_decoder(device, None), device, "decoder",
                         "benchmark")
        if "cache_dit" in MODES[name]:
            use_cache_dit(pipe, name, config.steps)
        entry = {"name": name, "options": MODES[name], "kernel": kernel,
                 "compiled": any("_ophora_eager_forward" in vars(b) for b in pipe.transformer.transformer_blocks)}
        if config.cache == "fixed" or MODES[name].get("mask") == "fixed":
            spec = config.cache_spec if config.cache == "fixed" else CacheSpec.make("fixed")
            entry["full_steps"] = len(full_steps(config.steps, spec.warmup, spec.interval))
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
        if "cache_dit" in MODES[name]:
            entry["cache_dit_cached_steps"] = cache_dit_steps(pipe)
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
            if name not in EXACT and "exact" in quality:
                entry["latent_rel_l2_vs_exact"] = rel_l2(latents, quality["exact"][0])
                entry["psnr_vs_exact_db"] = psnr(check_frames, quality["exact"][1])
        if "cache_dit" in MODES[name]:
            import cache_dit

            cache_dit.disable_cache(pipe)
        res["modes"].append(entry)
        print(json.dumps(entry), flush=True)

    res["modes"] = [m for m in earlier if m["name"] not in modes] + res["modes"]
    if stock is not None:
        res["stock_tiled_s"] = stock["pipe_tiled_denoise_s"] + stock["pipe_tiled_vae_decode_s"]
        res["stock_untiled_s"] = stock["pipe_untiled_denoise_s"] + stock["pipe_untiled_vae_decode_s"]
        res["stock_s"] = res["stock_tiled_s"]  # the paper's and the authors' setting: VAE slicing + tiling
        res["stock_peak_gib"] = stock.get("pipe_tiled_peak_gib")
        for entry in res["modes"]:
            entry["speedup_vs_stock"] = res["stock_s"] / entry["ours_s"]
            entry["speedup_vs_stock_untiled"] = res["stock_untiled_s"] / entry["ours_s"]
        res["stock_reference"] = stock
    if a.compile_cache and device == "cuda" and any(m["compiled"] for m in res["modes"]):
        blob, _ = torch.compiler.save_cache_artifacts()
        Path(a.out, Path(a.compile_cache).name).write_bytes(blob)
    res["command"] = "python benchmarks/sample_gpu.py " + " ".join(sys.argv[1:])
    if earlier:
        res["command"] += f" (after an invocation whose command was: {json.loads(Path(a.stock).read_text()).get('command')})"
    print(json.dumps(res, indent=1))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    name = "tiny" if a.tiny else next((g for g in ("h200", "h100") if g in res["device"].lower()), "gpu")
    Path(a.out, f"sample_gpu_{name}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
