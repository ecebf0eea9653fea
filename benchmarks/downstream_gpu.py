"""GPU training throughput of `ophora downstream`'s mvit_v2_s at 16x224x224 with the project's clip loader.

Synthetic clips (uint8 16x224x224x3, the layout `ophora downstream` caches) are written into safetensors
clip files, then mvit_v2_s (12 phases, from scratch) trains on them through `ClipDataset`/`make_loader`
exactly as `downstream/train.py` does (bf16 autocast, AdamW, Kinetics normalisation on the GPU). Per step
the time spent waiting for the loader's next batch and the time of the step itself (synchronised) are
measured; a second pass on one batch kept on the GPU gives the compute-only ceiling. Writes
benchmarks/results/downstream_gpu_<gpu>.json (clips/s, share of time the GPU waits for data).

    python benchmarks/downstream_gpu.py                        # 200 steps of 16 clips, 8 loader workers
    python benchmarks/downstream_gpu.py --workers 4 --steps 50
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ophora.core.versions import versions
from ophora.downstream.clips import ClipDataset, batches_of, epoch_order, make_loader, normalise, write_clip_file
from ophora.downstream.models import build_model

FRAMES, SIZE, PHASES = 16, 224, 12


def write_clips(folder: Path, files: int, per_file: int) -> list[tuple[Path, str, int]]:
    """`files` clip files of `per_file` random-texture clips each; returns the dataset items."""
    rng = np.random.default_rng(0)
    items = []
    for f in range(files):
        base = rng.integers(0, 256, (FRAMES, SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
        clips = {str(c): np.ascontiguousarray(np.repeat(np.repeat(base + c, 8, 1), 8, 2)) for c in range(per_file)}
        path = folder / f"video_{f}.safetensors"
        write_clip_file(path, clips, "benchmark", 0.0)
        items += [(path, str(c), (f + c) % PHASES) for c in range(per_file)]
    return items


def step(model, optimizer, clips, labels) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(normalise(clips.cuda(non_blocking=True)))
    loss = torch.nn.functional.cross_entropy(logits.float(), labels.cuda(non_blocking=True))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--files", type=int, default=256, help="clip files (videos) written")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    gpu = torch.cuda.get_device_name()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = build_model("mvit_v2_s", PHASES, FRAMES, SIZE).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        items = write_clips(Path(tmp), args.files, 4)
        dataset = ClipDataset(items)
        needed = args.steps + args.warmup
        order = []
        while len(order) < needed * args.batch_size:
            order += epoch_order(len(dataset), len(order))
        loader = make_loader(dataset, batches_of(order[:needed * args.batch_size], args.batch_size), args.workers,
                             pin=True)
        waits, steps = [], []
        batches = iter(loader)
        for i in range(needed):
            start = time.perf_counter()
            clips, labels = next(batches)
            got = time.perf_counter()
            step(model, optimizer, clips, labels)
            torch.cuda.synchronize()
            if i >= args.warmup:
                waits.append(got - start)
                steps.append(time.perf_counter() - got)
        # the ceiling: one batch kept on the GPU, no loader
        resident = (clips.cuda(), labels.cuda())
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps // 2):
            step(model, optimizer, *resident)
        torch.cuda.synchronize()
        compute_only = args.steps // 2 * args.batch_size / (time.perf_counter() - start)
    total = sum(waits) + sum(steps)
    result = {"gpu": gpu, "model": "mvit_v2_s", "clip": [FRAMES, SIZE, SIZE], "batch_size": args.batch_size,
              "workers": args.workers, "steps": args.steps, "precision": "bf16 autocast",
              "clips_per_s": round(args.steps * args.batch_size / total, 2),
              "compute_only_clips_per_s": round(compute_only, 2),
              "data_wait_share": round(sum(waits) / total, 4),
              "median_step_ms": round(1000 * float(np.median(steps)), 2),
              "median_wait_ms": round(1000 * float(np.median(waits)), 2),
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "versions": versions("torchvision")}
    name = re.sub(r"[^a-z0-9]+", "", gpu.lower().split()[-1]) if gpu else "gpu"
    out = args.out or Path(__file__).parent / "results" / f"downstream_gpu_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
