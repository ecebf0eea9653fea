"""GPU feature-extraction throughput of `ophora evaluate`'s FID and FVD networks against the reference packages.

Synthetic uint8 videos of 49x480x720 (the paper's sampling size) go through, in the same process and on the
same GPU: ophora's FID Inception (every frame, pytorch-fid's preprocessing) and pytorch-fid's InceptionV3;
ophora's I3D (one 16-frame clip per video, fvd2048_16f preprocessing) and cd-fvd's I3D. All networks carry
the same randomly initialised weights saved in the published file layouts (throughput does not depend on
the values; no weights are downloaded). Decoding is not timed. The features of both implementations are
compared on the first batch. Writes benchmarks/results/evaluate_gpu_<gpu>.json.

    python benchmarks/evaluate_gpu.py                  # 2048 videos (the FVD protocol's count)
    python benchmarks/evaluate_gpu.py --videos 64      # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ophora.core.versions import versions
from ophora.evaluate.i3d import i3d_features, load_i3d
from ophora.evaluate.inception import inception_features, load_inception
from ophora.evaluate.random_weights import write_random_i3d, write_random_inception

FRAMES, HEIGHT, WIDTH = 49, 480, 720


def synthetic_pool(size: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`size` distinct uint8 videos (49, 480, 720, 3) in host memory, made once on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    pool = []
    for _ in range(size):
        base = torch.randint(0, 256, (FRAMES, 3, HEIGHT // 8, WIDTH // 8), generator=g, device="cuda").float()
        video = torch.nn.functional.interpolate(base, size=(HEIGHT, WIDTH), mode="bilinear").permute(0, 2, 3, 1)
        pool.append(video.to(torch.uint8).contiguous().cpu().numpy())  # the layout decoded frames have
    return pool


def timed(fn, pool: list[np.ndarray], videos: int, warmup: int = 2) -> tuple[float, object]:
    """Videos per second of `fn` over `videos` videos cycled from `pool`, and `fn`'s output on the first one."""
    first = fn(pool[0])
    for i in range(1, warmup):
        fn(pool[i % len(pool)])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(videos):
        fn(pool[i % len(pool)])
    torch.cuda.synchronize()
    return videos / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=49, help="frames per Inception batch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import pytorch_fid.inception as fid_module
    from cdfvd.third_party.i3d.utils import load_i3d_model, preprocess_i3d

    device = "cuda"
    gpu = torch.cuda.get_device_name(0)
    folder = Path(tempfile.mkdtemp())
    inception_file = write_random_inception(folder / "pt_inception-2015-12-05-6726825d.pth")
    i3d_file = write_random_i3d(folder / "i3d_pretrained_400.pt")
    ours_fid = load_inception(inception_file, device)
    fid_module.load_state_dict_from_url = lambda *a, **k: torch.load(inception_file, weights_only=True)
    ref_fid = fid_module.InceptionV3([3]).to(device).eval()
    ours_i3d, _ = load_i3d(i3d_file, device)
    ref_i3d = load_i3d_model(torch.device(device), str(i3d_file))

    @torch.no_grad()
    def reference_fid(video):
        out = []
        for s in range(0, len(video), args.batch_size):
            x = torch.from_numpy(video[s:s + args.batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
            out.append(ref_fid(x)[0].squeeze(3).squeeze(2).double().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def reference_fvd(video):
        return ref_i3d(preprocess_i3d(video[None, :16]).to(device)).double().cpu().numpy()

    results = {}
    runs = {
        "fid_inception_ophora": lambda v: inception_features(ours_fid, v, args.batch_size),
        "fid_inception_pytorch_fid": reference_fid,
        "fvd_i3d_ophora": lambda v: i3d_features(ours_i3d, v[None, :16]),
        "fvd_i3d_cd_fvd": reference_fvd,
    }
    firsts = {}
    pool = synthetic_pool()
    short = "h200" if "H200" in gpu else gpu.lower().replace(" ", "_")
    out = args.out or Path(__file__).parent / "results" / f"evaluate_gpu_{short}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in runs.items():
        rate, firsts[name] = timed(fn, pool, args.videos)
        results[name] = {"videos_per_s": round(rate, 3)}
        print(f"{name}: {rate:.2f} videos/s", flush=True)
        (out.parent / f"{out.stem}.partial.json").write_text(json.dumps(results, indent=1))  # a killed run keeps these
    for ours, ref in (("fid_inception_ophora", "fid_inception_pytorch_fid"), ("fvd_i3d_ophora", "fvd_i3d_cd_fvd")):
        a, b = np.asarray(firsts[ours]), np.asarray(firsts[ref])
        results[ours]["max_abs_feature_difference_vs_reference"] = float(np.abs(a - b).max())
        results[ours]["speed_vs_reference"] = round(results[ours]["videos_per_s"] / results[ref]["videos_per_s"], 3)
    record = {"gpu": gpu, "videos": args.videos, "video": f"{FRAMES}x{HEIGHT}x{WIDTH} uint8, synthetic",
              "fid": f"every frame, batches of {args.batch_size} frames", "fvd": "one 16-frame clip per video",
              "timed": "network + preprocessing, host-to-device copy included, decoding excluded; the videos cycle "
                       f"through {len(pool)} distinct ones held in host memory",
              "results": results, "versions": versions("pytorch-fid", "cd-fvd", "scipy")}
    out.write_text(json.dumps(record, indent=1))
    print(out)


if __name__ == "__main__":
    main()
