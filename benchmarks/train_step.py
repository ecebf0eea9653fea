"""Full fine-tuning step of the ophora trainer at the published CogVideoX-2b size (random weights), 49x480x720.

Measures, in one process: the stock step (as ../shared/bench/stock_cogvideox.py --parts train: fp32 weights,
bf16 autocast, every block checkpointed, fused AdamW, batch 1) and the trainer's own step (accelerate bf16
with fp32 master weights, CogVideoX's weighted v-prediction loss, grad clipping, fused AdamW) under its speed
switches: per-block torch.compile and selective checkpointing (`checkpoint_blocks`: recompute only the first
N of 30 blocks). It picks the fastest setting whose peak memory is at most the stock step's, then finds the
largest batch that fits the GPU. Speed does not depend on weight values, so random weights give real timings.

With torchao importable (carry its wheel) on an SM89+ GPU it also tries the fastest setting with torchao's
float8 training for the blocks' linear layers (`fp8_linears`, src/ophora/train/fp8.py). Attention runs diffusers'
processor with PyTorch SDPA (cuDNN) forward and backward, except in the variants with attention fa4: where
FlashAttention-4 runs (flash-attn-4 importable on SM90/SM100: benchmarks/gpu_fa4.sh installs it) the fastest
setting is measured again with it (src/ophora/core/fa4.py), and with it and fp8 linears. Writes
train_step_<gpu>.json (train_step_h200.json on an H200) with speedup_vs_stock, peak_gib and stock_peak_gib.

    python benchmarks/train_step.py [--tiny] [--stock-json $OUT/stock.json] [--no-compile] [--no-fp8] [--no-fa4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.core.attention import fa4_unavailable  # noqa: E402
from ophora.train.blocks import configure_attention, configure_blocks  # noqa: E402
from ophora.train.config import TrainConfig  # noqa: E402
from ophora.train.fp8 import fp8_unavailable, to_fp8_linears  # noqa: E402
from ophora.train.trainer import diffusion_loss, make_optimizer  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
PARTIAL: Path | None = None  # JSON lines of the settings measured so far


def shapes(tiny: bool) -> tuple[dict, int, int, int, int, int]:
    """Transformer config and (height, width, frames, text tokens, text width)."""
    if tiny:
        cfg = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32, time_embed_dim=32,
                   sample_width=8, sample_height=8, sample_frames=9, max_text_seq_length=8)
        return cfg, 64, 64, 9, 8, 32
    return {}, 480, 720, 49, 226, 4096


def forward_flops(model, h: int, w: int, f: int, text: int) -> float:
    """FLOPs of one forward pass at batch 1, counted as ../shared/bench/stock_cogvideox.py counts them."""
    cfg = model.config
    tokens = ((f - 1) // 4 + 1) * (h // 16) * (w // 16) + text
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    return 2 * sum(p.numel() for p in model.parameters()) * tokens + 4 * tokens**2 * hidden * cfg.num_layers


def build(cfg: dict):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    with torch.device(DEVICE):
        return CogVideoXTransformer3DModel(**cfg).train()


def timed(step, warm: int, n: int) -> tuple[float, float | None]:
    """Seconds per call and peak GiB (None on the CPU); warm-up calls include compilation."""
    for _ in range(warm):
        step()
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if CUDA:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n, torch.cuda.max_memory_allocated() / 2**30 if CUDA else None


def stock_step(cfg: dict, h: int, w: int, f: int, text: int, dim: int, warm: int, n: int) -> dict:
    """The reference step of stock_cogvideox.py --parts train, measured here."""
    model = build(cfg)
    model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=CUDA)
    x = torch.randn(1, (f - 1) // 4 + 1, 16, h // 8, w // 8, device=DEVICE)
    e = torch.randn(1, text, dim, device=DEVICE)
    t = torch.tensor([500], device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
            y = model(hidden_states=x, encoder_hidden_states=e, timestep=t, return_dict=False)[0]
        (y.float() - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, peak = timed(step, warm, n)
    flops = forward_flops(model, h, w, f, text)
    release(model, opt)
    return {"name": "stock", "batch": 1, "checkpoint_blocks": None, "selective": False, "compile": False, "step_s": seconds, "samples_per_s": 1 / seconds, "peak_gib": peak,
            "model_tflops": 3 * flops / seconds / 1e12}


def ours_step(cfg: dict, h: int, w: int, f: int, text: int, dim: int, batch: int, checkpoint_blocks: int | None,
              selective: bool, compile_blocks: bool, warm: int, n: int, fp8: bool = False,
              attention: str = "sdpa") -> dict:
    """The trainer's step (accelerate, diffusion_loss, clipping, fused AdamW) with the given switches."""
    from accelerate import Accelerator
    from diffusers import CogVideoXDDIMScheduler

    from ophora.synthetic.random_pipeline import SCHEDULER_CONFIG

    name = (f"ours ckpt={'all' if checkpoint_blocks is None else checkpoint_blocks} selective={int(selective)} "
            f"compile={int(compile_blocks)} batch={batch}" + (" fp8-linears" if fp8 else "") +
            (f" attention={attention}" if attention != "sdpa" else ""))
    config = TrainConfig(model="-", cache="-", out="-", mixed_precision="bf16" if CUDA else "no", batch_size=batch,
                         checkpoint_blocks=checkpoint_blocks, selective_checkpointing=selective,
                         compile_blocks=compile_blocks, posterior_draws=True, attention=attention)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not CUDA)
    torch._dynamo.reset()  # each setting compiles afresh, as in one training run
    model = build(cfg)
    fp8_layers = to_fp8_linears(model) if fp8 else 0
    kernel = configure_attention(model, attention, DEVICE, config.mixed_precision)  # the one it runs, after fallback
    configure_blocks(model, True, checkpoint_blocks, selective, compile_blocks)
    params, model_config = list(model.parameters()), model.config
    opt = make_optimizer(params, config)
    model, opt = accelerator.prepare(model, opt)
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    lat = (16, (f - 1) // 4 + 1, h // 8, w // 8)
    batch_data = {"latent_mean": torch.randn(batch, *lat), "latent_logvar": torch.full((batch, *lat), -8.0),
                  "prompt_embeds": torch.randn(batch, text, dim), "positions": torch.arange(batch)}
    counter = iter(range(10**9))

    def step():
        data = {**batch_data, "micro_step": torch.tensor(next(counter))}
        loss = diffusion_loss(model, scheduler, data, config, 1.15258426, batch, 1, model_config)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        seconds, peak = timed(step, warm + (4 if compile_blocks else 0), n)  # compilation and recompilations
        flops = forward_flops(accelerator.unwrap_model(model), h, w, f, text)
        result = {"name": name, "batch": batch, "checkpoint_blocks": checkpoint_blocks, "selective": selective,
                  "compile": compile_blocks, "fp8": fp8, "fp8_linears": fp8_layers, "attention": kernel, "step_s": seconds,
                  "samples_per_s": batch / seconds, "peak_gib": peak,
                  "model_tflops": 3 * flops * batch / seconds / 1e12}
    except torch.OutOfMemoryError:
        result = {"name": name, "batch": batch, "checkpoint_blocks": checkpoint_blocks, "selective": selective,
                  "compile": compile_blocks, "fp8": fp8, "attention": kernel, "oom": True}
    release(model, opt)
    accelerator.free_memory()
    print(json.dumps(result), flush=True)
    return result


def isolated(args: argparse.Namespace, batch: int, checkpoint_blocks: int | None, selective: bool,
             compile_blocks: bool, warm: int, n: int, fp8: bool = False, attention: str = "sdpa") -> dict:
    """`ours_step` in a fresh process, so no variant inherits another's allocations or compiled graphs."""
    spec = f"{batch}:{checkpoint_blocks}:{int(selective)}:{int(compile_blocks)}:{warm}:{n}:{int(fp8)}:{attention}"
    cmd = [sys.executable, __file__, "--one", spec, "--out", args.out] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:  # recorded, and the other settings are still measured
        print(f"variant {spec} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        errors = [ln.strip() for ln in done.stderr.splitlines() if "Error" in ln] or ["no result line"]
        line = json.dumps({"name": f"ours {spec}", "batch": batch, "checkpoint_blocks": checkpoint_blocks,
                           "selective": selective, "compile": compile_blocks, "fp8": fp8, "attention": attention,
                           "error": errors[-1][:300]})
    else:
        line = lines[-1]
    print(line, flush=True)
    if PARTIAL is not None:  # what was measured so far survives a time limit
        with PARTIAL.open("a") as f:
            f.write(line + "\n")
    return json.loads(line)


def largest_batch(a: argparse.Namespace, best: dict, variants: list[dict]) -> dict | None:
    """The largest batch of the best setting that fits the GPU: doubling, then bisection."""
    def fits(batch: int) -> dict | None:
        result = isolated(a, batch, best["checkpoint_blocks"], best["selective"], best["compile"], 1, 1,
                          best.get("fp8", False), best.get("attention", "sdpa"))
        variants.append(result)
        return None if result.get("oom") or result.get("error") else result

    largest, low, high = None, 1, None
    batch = 2
    while batch <= a.max_batch:
        result = fits(batch)
        if result is None:
            high = batch
            break
        largest, low, batch = result, batch, batch * 2
    while high is not None and high - low > 1:
        mid = (low + high) // 2
        result = fits(mid)
        if result is None:
            high = mid
        else:
            largest, low = result, mid
    return largest


def run_one(spec: str, tiny: bool) -> None:
    batch, ckpt, selective, compile_blocks, warm, n, fp8, attention = spec.split(":")
    cfg, h, w, f, text, dim = shapes(tiny)
    ours_step(cfg, h, w, f, text, dim, int(batch), None if ckpt == "None" else int(ckpt), selective == "1",
              compile_blocks == "1", int(warm), int(n), fp8 == "1", attention)


def release(*objects) -> None:
    for o in objects:
        del o
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy size, runs on the CPU")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--stock-json", help="stock.json of stock_cogvideox.py --parts train from the same run (reported beside)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-fp8", action="store_true", help="skip the torchao float8-linears variant")
    p.add_argument("--no-fa4", action="store_true", help="skip the FlashAttention-4 variants")
    p.add_argument("--checkpoint-blocks", default="27,24,20", help="numbers of checkpointed blocks to try, fewest last")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--quick", action="store_true",
                   help="skip the fully checkpointed settings without selective checkpointing (slower on H100 and H200)")
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--one", help=argparse.SUPPRESS)  # batch:ckpt:selective:compile:warm:n:fp8:attention (isolated())
    p.add_argument("--batch-search", metavar="CKPT:SELECTIVE:COMPILE",
                   help="only find the largest batch of this setting (e.g. 27:1:1), written to train_batch.json")
    a = p.parse_args()
    if a.one:
        return run_one(a.one, a.tiny)
    if a.batch_search:
        ckpt, selective, compile_ = a.batch_search.split(":")
        setting = {"checkpoint_blocks": None if ckpt == "None" else int(ckpt), "selective": selective == "1",
                   "compile": compile_ == "1"}
        tried: list[dict] = []
        largest = largest_batch(a, setting, tried)
        res = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "setting": setting, "largest_batch": largest,
               "tried": tried, "command": " ".join(sys.argv)}
        (Path(a.out) / "train_batch.json").write_text(json.dumps(res, indent=1))
        return None
    cfg, h, w, f, text, dim = shapes(a.tiny)
    layers = cfg.get("num_layers", 30)
    compile_blocks = not a.no_compile
    torch.backends.cuda.matmul.allow_tf32 = True

    global PARTIAL
    Path(a.out).mkdir(parents=True, exist_ok=True)
    PARTIAL = Path(a.out) / "train_step_partial.jsonl"
    PARTIAL.unlink(missing_ok=True)
    stock = stock_step(cfg, h, w, f, text, dim, a.warm, a.n)
    print(json.dumps(stock), flush=True)
    PARTIAL.write_text(json.dumps(stock) + "\n")
    release()
    variants = [] if a.quick else [isolated(a, 1, None, False, False, a.warm, a.n)]
    if compile_blocks and not a.quick:
        variants.append(isolated(a, 1, None, False, True, a.warm, a.n))
    variants.append(isolated(a, 1, None, True, compile_blocks, a.warm, a.n))
    budget = stock["peak_gib"]
    for k in sorted({int(x) for x in a.checkpoint_blocks.split(",") if x and int(x) < layers}, reverse=True):
        result = isolated(a, 1, k, True, compile_blocks, a.warm, a.n)
        variants.append(result)
        if result.get("oom") or result.get("error") or (budget is not None and result["peak_gib"] > budget):
            break  # fewer checkpointed blocks only need more memory
    fits = [v for v in variants if not v.get("oom") and not v.get("error") and
            (budget is None or v["peak_gib"] <= budget)]
    best = max(fits, key=lambda v: v["samples_per_s"])
    fp8_missing = "--no-fp8" if a.no_fp8 else fp8_unavailable()
    fa4_missing = "--no-fa4" if a.no_fa4 else fa4_unavailable(DEVICE)
    sdpa_best = best
    tries = [(fp8_missing is None, True, "sdpa"), (fa4_missing is None, False, "fa4"),  # the fastest SDPA setting
             (fp8_missing is None and fa4_missing is None, True, "fa4")]              # with fp8 linears and/or fa4
    for wanted, fp8, attention in tries:
        if not wanted:
            continue
        ckpt = sdpa_best["checkpoint_blocks"]
        result = isolated(a, 1, ckpt, sdpa_best["selective"], sdpa_best["compile"], a.warm, a.n, fp8, attention)
        variants.append(result)
        over = result.get("oom") or (budget is not None and (result.get("peak_gib") or 0) > budget)
        if attention == "fa4" and over and ckpt is not None and ckpt < layers:  # FA4's backward workspace can tip
            result = isolated(a, 1, ckpt + 1, sdpa_best["selective"], sdpa_best["compile"], a.warm, a.n, fp8,
                              attention)                                       # a setting at the limit over it
            variants.append(result)
        if not result.get("oom") and not result.get("error") and \
                (budget is None or result["peak_gib"] <= budget) and result["samples_per_s"] > best["samples_per_s"]:
            best = result

    largest = largest_batch(a, best, variants)
    res = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
        "size": "tiny" if a.tiny else "CogVideoX-2b 49x480x720", "stock_s": stock["step_s"], "ours_s": best["step_s"],
        "speedup_vs_stock": best["samples_per_s"] / stock["samples_per_s"], "peak_gib": best["peak_gib"],
        "stock_peak_gib": stock["peak_gib"], "samples_per_s": best["samples_per_s"], "model_tflops": best["model_tflops"],
        "best": best["name"], "largest_batch": largest and {"batch": largest["batch"], "samples_per_s": largest["samples_per_s"],
                                                            "peak_gib": largest["peak_gib"]},
        "variants": [stock, *variants], "fp8_linears": fp8_missing or "measured (variants with fp8 true)",
        "fa4": fa4_missing or "measured (variants with attention fa4)",
        "attention_backward": "SDPA (cuDNN) forward and backward, or FlashAttention-4's in the fa4 variants (the fa3-fwd "
                              "package has no backward)",
        "command": " ".join(sys.argv),
    }
    if a.stock_json and Path(a.stock_json).is_file():
        ref = json.loads(Path(a.stock_json).read_text())
        res["stock_script"] = {k: ref.get(k) for k in ("train_step_b1_gc_s", "train_peak_gib", "train_mfu_tflops_3x")}
        res["speedup_vs_stock_script"] = ref["train_step_b1_gc_s"] / best["step_s"]
    print(json.dumps(res, indent=1))
    PARTIAL.unlink()
    name = "tiny" if a.tiny else next((g for g in ("h200", "h100") if g in res["device"].lower()), "gpu")
    (Path(a.out) / f"train_step_{name}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
