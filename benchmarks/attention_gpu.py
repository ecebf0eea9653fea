"""Kernel-level check of ophora's CogVideoX attention on the GPU, at the published CogVideoX-2b size.

1. Attention alone (B=2, 30 heads, 17,776 tokens, d=64): each kernel's time, TFLOP/s and error against an
   fp64 reference (on the first 256 queries of every head); then, for the kernels with a backward (cuDNN SDPA,
   and FlashAttention-4 where it runs), forward and forward+backward at the training shape (B=1), with the
   gradients' difference from SDPA's. `--kernels-only` stops here (no diffusers needed).
2. One CFG denoise step of the random 2b transformer: stock diffusers (separate projections, its processor),
   ours with each kernel, and ours with the blocks compiled (compile time reported); each step's output error
   against an fp32 step on the same (bf16-rounded) weights.
3. VAE decode of one video's latents with and without cuDNN's conv autotuning (`cudnn.benchmark`).

    python benchmarks/attention_gpu.py --out $OUT        # writes attention_gpu.json (+ compile_cache.bin)
    python benchmarks/attention_gpu.py --out $OUT --kernels-only   # part 1 only (benchmarks/gpu_fa4.sh)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ophora.core.attention import (CogVideoXAttention, attention, choose_kernel, fa3_unavailable,  # noqa: E402
                                   fa4_unavailable)


def timed(fn, warm=2, n=5) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def kernels_alone(res: dict, kernels: list[str]) -> None:
    B, S, H, D = 2, 17776, 30, 64
    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    k = k + 0.5 * torch.randn(1, 1, H, D, device="cuda", dtype=torch.bfloat16, generator=g)  # a shared key offset
    ref = F.scaled_dot_product_attention(q[:, :256].double().transpose(1, 2), k.double().transpose(1, 2),
                                         v.double().transpose(1, 2)).transpose(1, 2)
    flops = 4 * B * H * S * S * D
    for kernel in kernels:
        s = timed(lambda: attention(q, k, v, kernel), warm=3, n=10)
        out = attention(q, k, v, kernel)
        res[f"attn_{kernel}"] = {"ms": s * 1e3, "tflops": flops / s / 1e12, "rel_err_vs_fp64": rel(out[:, :256], ref)}
        print(kernel, res[f"attn_{kernel}"], flush=True)


def kernels_fwd_bwd(res: dict, kernels: list[str]) -> None:
    """Forward and forward+backward (gradients of q, k and v) at the training shape: one 49x480x720 video."""
    B, S, H, D = 1, 17776, 30, 64
    g = torch.Generator("cuda").manual_seed(2)
    q, k, v, dout = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    flops = 4 * B * H * S * S * D  # forward; the backward does 2.5 times as much

    def fwd_bwd(kernel):
        return torch.autograd.grad(attention(q, k, v, kernel), (q, k, v), dout)

    reference = fwd_bwd("sdpa")
    for kernel in kernels:
        with torch.no_grad():
            fwd = timed(lambda kernel=kernel: attention(q, k, v, kernel), warm=3, n=10)
        both = timed(lambda kernel=kernel: fwd_bwd(kernel), warm=3, n=10)
        grads = fwd_bwd(kernel)
        res[f"train_attn_{kernel}"] = {
            "fwd_ms": fwd * 1e3, "fwd_tflops": flops / fwd / 1e12, "fwd_bwd_ms": both * 1e3,
            "fwd_bwd_tflops": 3.5 * flops / both / 1e12,
            "grad_rel_diff_vs_sdpa": {n: rel(a, b) for n, a, b in zip(("dq", "dk", "dv"), grads, reference)}}
        print(f"train {kernel}", res[f"train_attn_{kernel}"], flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-modes", default="default,max-autotune-no-cudagraphs")
    p.add_argument("--kernels-only", action="store_true", help="only the attention kernels alone (part 1)")
    a = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "fa3_unavailable": fa3_unavailable("cuda"), "fa4_unavailable": fa4_unavailable("cuda"),
           "auto_kernel": choose_kernel("auto", "cuda"), "train_auto_kernel": choose_kernel("auto", "cuda", training=True)}
    with_fa4 = ["fa4"] if res["fa4_unavailable"] is None else []
    kernels = ["sdpa"] + (["fa3", "fp8"] if res["auto_kernel"] == "fa3" else []) + with_fa4
    kernels_alone(res, kernels)
    kernels_fwd_bwd(res, ["sdpa", *with_fa4])
    if a.kernels_only:
        print(json.dumps(res, indent=1))
        Path(a.out, "attention_gpu_kernels.json").write_text(json.dumps(res, indent=1))
        return
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from ophora.sample.speed import compile_blocks, uncompile_blocks

    torch.manual_seed(0)
    with torch.device("cuda"):
        tr = CogVideoXTransformer3DModel(sample_width=90, sample_height=60, sample_frames=49, max_text_seq_length=226)
    tr = tr.to(torch.bfloat16).eval()
    ref_tr = copy.deepcopy(tr).float()
    g = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2, 13, 16, 60, 90, device="cuda", dtype=torch.bfloat16, generator=g)
    e = torch.randn(2, 226, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.tensor([500, 500], device="cuda")

    @torch.no_grad()
    def step(model, dtype=torch.bfloat16):
        return model(hidden_states=x.to(dtype), encoder_hidden_states=e.to(dtype), timestep=t, return_dict=False)[0]

    t0 = time.perf_counter()
    ref = step(ref_tr, torch.float32)
    torch.cuda.synchronize()
    res["fp32_step_s"] = time.perf_counter() - t0
    del ref_tr
    torch.cuda.empty_cache()
    stock_out = step(tr)
    res["step_stock"] = {"s": timed(lambda: step(tr)), "rel_err_vs_fp32": rel(stock_out, ref)}
    print("stock", res["step_stock"], flush=True)
    tr.fuse_qkv_projections()
    modes = a.compile_modes.split(",")
    best = "fa3" if "fa3" in kernels else "sdpa"
    variants = [(k, None) for k in kernels]
    if not a.no_compile:
        variants += [(best, m) for m in modes] + [(k, modes[0]) for k in kernels if k not in ("sdpa", best)]
    for kernel, mode in variants:
        tr.set_attn_processor(CogVideoXAttention(kernel))
        name = f"step_{kernel}" + (f"_compiled_{mode}" if mode else "")
        entry = {}
        if mode:
            torch._dynamo.reset()
            uncompile_blocks(tr)  # compile_blocks leaves compiled blocks as they are
            compile_blocks(tr, mode=mode)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(tr)
            torch.cuda.synchronize()
            entry["first_call_s"] = time.perf_counter() - t0
        out = step(tr)
        entry.update(s=timed(lambda: step(tr)), rel_err_vs_fp32=rel(out, ref), rel_diff_vs_stock=rel(out, stock_out))
        res[name] = entry
        print(name, entry, flush=True)
    if not a.no_compile:
        try:
            blob, _ = torch.compiler.save_cache_artifacts()
            Path(a.out, "compile_cache.bin").write_bytes(blob)
            res["compile_cache_bytes"] = len(blob)
        except Exception as exc:  # report, never fail the run for it
            res["compile_cache_error"] = repr(exc)
    del tr
    torch.cuda.empty_cache()

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(latent_channels=16).to("cuda", torch.bfloat16).eval()
    z = torch.randn(1, 16, 13, 60, 90, device="cuda", dtype=torch.bfloat16)
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        with torch.no_grad():
            res[f"vae_decode_cudnn_benchmark_{bench}_s"] = timed(lambda: vae.decode(z / vae.config.scaling_factor),
                                                                   warm=1, n=2)
        print("vae decode, cudnn.benchmark", bench, res[f"vae_decode_cudnn_benchmark_{bench}_s"], flush=True)
    torch.backends.cudnn.benchmark = False
    print(json.dumps(res, indent=1))
    Path(a.out, "attention_gpu.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
