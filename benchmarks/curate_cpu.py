"""`ophora curate` wall time against a plain decode of the same videos, on the same CPU cores.

Generates several minutes of 1920x1080 narrated video (the sample-video renderer: drifting eye, moving
instruments, SRT narration, a burned-in caption, a frozen and a black stretch and a scene cut per video),
then, in one run: decodes every frame of every file with the same number of worker processes, curates the
folder with the `rules` refiner (`curate_s`) and decodes again; `decode_s` is the mean of both decodes.
Target: ratio = curate_s / decode_s <= 2.

    python benchmarks/curate_cpu.py [--minutes 5] [--videos 4] [--workers N] [--data DIR] [--tiny]
        [--options smart,smart:veryfast,copy,smart:superfast:0:off,reencode:ultrafast:720]
    # writes benchmarks/results/curate_cpu.json (or --json PATH): the first option (the default, smart) at the
    # top level, every option's time, ratio and clip bytes under "options"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import av  # noqa: E402

from ophora.core.privacy import PrivacyConfig  # noqa: E402
from ophora.curate.pipeline import CurateConfig, curate  # noqa: E402
from ophora.synthetic.narrated_videos import NarratedVideo, Segment, write_narrated_video  # noqa: E402

PHRASES = [
    "The keratome enters the anterior chamber at the temporal limbus.",
    "Viscoelastic is injected to deepen the anterior chamber.",
    "The cystotome starts the capsulorhexis flap.",
    "Forceps complete the continuous curvilinear capsulorhexis.",
    "The cannula injects balanced salt solution under the capsule.",
    "The phaco tip sculpts a central groove in the nucleus.",
    "The chopper divides the nucleus into quadrants.",
    "Each quadrant is emulsified in the capsular bag.",
    "The irrigation aspiration handpiece removes the cortex.",
    "The foldable lens is injected into the capsular bag.",
]
EFFECTS = {3: "caption", 7: "frozen", 11: "black", 14: "cut"}


def plan(index: int, seconds: float, width: int, height: int) -> NarratedVideo:
    """One benchmark video: cues of 3.5-7 s, with a caption, frozen, black and cut segment."""
    segments, t, k = [], 0.0, 0
    while t < seconds - 3.5:
        length = min(3.5 + (k * 1.7) % 3.5, seconds - t)
        segments.append(Segment(t, t + length, PHRASES[(k + index) % len(PHRASES)], EFFECTS.get(k % 16, "clean")))
        t, k = t + length, k + 1
    return NarratedVideo(f"bench_{index}", width, height, "srt", segments)


def _decode_all(path: str) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def plain_decode(paths: list[Path], workers: int) -> tuple[float, int]:
    """Seconds to decode every frame of every file with `workers` processes, and the frame count."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        frames = sum(pool.map(_decode_all, [str(p) for p in paths]))
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="total video length")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--fps", type=float, default=29.97)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--data", default=None, help="keep the generated videos here (reused when present)")
    parser.add_argument("--options", default="smart,smart:veryfast,smart:ultrafast,copy,smart:superfast:0:off",
                        help="clip modes to time, MODE[:PRESET[:MAX_HEIGHT[:PRIVACY]]] each, comma-separated "
                             "(defaults: curate's)")
    parser.add_argument("--tiny", action="store_true", help="20 s of 854x480 for a quick check")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "curate_cpu.json"))
    args = parser.parse_args()
    width, height, minutes = (854, 480, 20 / 60) if args.tiny else (1920, 1080, args.minutes)

    # 1. generate (or reuse) the narrated videos
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="curate-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    seconds = minutes * 60 / args.videos
    paths = []
    for i in range(args.videos):
        video = plan(i, seconds, width, height)
        path = data / f"{video.stem}.mp4"
        if not path.is_file():
            write_narrated_video(video, data, args.fps, seed=100 + i, keyint=int(round(2 * args.fps)))
        paths.append(path)
    for path in paths:  # both measurements start from the page cache
        path.read_bytes()

    # 2. plain decode, curation, plain decode again (same cores and worker count); the machine may be shared,
    #    so decode_s is the mean of the decodes before and after, and the load averages are recorded
    load_before = os.getloadavg()
    first_s, frames = plain_decode(paths, args.workers)
    out = data.parent / f"{data.name}-out"
    options = []
    for spec in args.options.split(","):
        parts = spec.split(":")
        mode, preset, max_h, backend = (parts + [CurateConfig.preset, "0", PrivacyConfig.backend][len(parts) - 1:])[:4]
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        summary = curate(CurateConfig(input=data, out=out, workers=args.workers, clip_mode=mode, preset=preset,
                                      max_height=int(max_h), privacy=PrivacyConfig(backend=backend)))
        seconds = time.perf_counter() - start
        clip_bytes = sum(p.stat().st_size for p in (out / "clips").glob("*.mp4"))
        options.append({"clip_mode": mode, "preset": preset, "max_height": int(max_h), "privacy": backend,
                        "curate_s": round(seconds, 2),
                        "clip_bytes": clip_bytes, "kept": summary["clips"]["kept"],
                        "kept_seconds": summary["clips"]["kept_seconds"], "summary": summary})
    second_s, _ = plain_decode(paths, args.workers)
    decode_s = (first_s + second_s) / 2
    for option in options:
        option["ratio"] = round(option["curate_s"] / decode_s, 3)
        option["mbit_per_s"] = round(option["clip_bytes"] * 8 / 1e6 / max(option["kept_seconds"], 1e-9), 2)
    summary, curate_s = options[0]["summary"], options[0]["curate_s"]

    result = {
        "decode_s": round(decode_s, 2), "curate_s": round(curate_s, 2), "ratio": round(curate_s / decode_s, 3),
        "target_ratio": 2.0, "decode_runs_s": [round(first_s, 2), round(second_s, 2)],
        "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)], "videos": args.videos, "video_seconds": round(minutes * 60, 1), "frames": frames,
        "size": f"{width}x{height}", "fps": args.fps, "workers": args.workers, "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "refiner": "rules", "clip_mode": options[0]["clip_mode"],
        "clips": summary["clips"], "stage_timings": summary["timings"], "versions": summary["versions"],
        "options": [{k: v for k, v in o.items() if k != "summary"} for o in options],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("decode_s", "curate_s", "ratio", "frames", "size", "options")}))
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
