"""The `ophora` command: each subcommand only parses its arguments and calls the stage's function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ophora.errors import OphoraError

log = logging.getLogger("ophora")

# Subcommand name -> (help line, function adding its arguments, function running it).
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `fn(args)` as the subcommand `name`."""

    def register(fn: Callable[[argparse.Namespace], int | None]):
        COMMANDS[name] = (help, add_arguments, fn)
        return fn

    return register


# ---------------------------------------------------------------------------------------------- make-tiny-model


def _tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to write the pipeline into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["tiny", "small", "2b"], default="tiny",
                   help="tiny: seconds on a CPU; small: a moderate model for learning checks; "
                        "2b: the published CogVideoX-2b size, for benchmarks (about 7 GB)")


@command("make-tiny-model", "write a random CogVideoX pipeline (diffusers layout) for tests and the demo", _tiny_args)
def _tiny(args: argparse.Namespace) -> None:
    from ophora.models import make_tiny_model

    print(make_tiny_model(args.dir, seed=args.seed, size=args.size))


# ---------------------------------------------------------------------------------------------- sample


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id (e.g. General-Medical-AI/Ophora) or local diffusers folder")
    p.add_argument("--out", required=True, help="output folder: <out>/<clip id>/<n>.mp4, manifest.csv, index.html")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="CSV (see --prompt-column/--id-column) or .txt file with one prompt a line")
    src.add_argument("--prompt", help="a single prompt")
    p.add_argument("--prompt-column", default="caption prompt")
    p.add_argument("--id-column", default="clip id")
    p.add_argument("--videos-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale (dynamic CFG)")
    p.add_argument("--no-dynamic-cfg", dest="dynamic_cfg", action="store_false", help="constant guidance scale")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--frames", type=int, default=49, help="4k+1 frames")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda:<local rank> if a GPU is present, else cpu")
    p.add_argument("--scheduler", choices=["dpm", "ddim"], default="dpm")
    p.add_argument("--lora", default=None, help="LoRA weights (folder or .safetensors) to apply")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--vae-tiling", choices=["auto", "on", "off"], default="auto",
                   help="auto: decode untiled when it fits in free GPU memory")
    p.add_argument("--qp", type=int, default=18, help="H.264 constant quantizer (lower is better quality)")
    p.add_argument("--overwrite", action="store_true", help="redo videos that already exist")
    p.add_argument("--cfg-parallel", action="store_true",
                   help="with torchrun: each pair of ranks shares one video, one CFG half each (about 2x per video)")


@command("sample", "generate videos from prompts (multi-GPU with torchrun), resumable", _sample_args)
def _sample(args: argparse.Namespace) -> int:
    from ophora.sample import SampleConfig, sample

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    summary = sample(SampleConfig(**fields))
    return 1 if summary.failed else 0


# ---------------------------------------------------------------------------------------------- prepare


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder in the Ophora-160K layout: clips/<clip id>.mp4 + CSV 'clip id,instruction'")
    p.add_argument("--model", required=True, help="pipeline whose VAE and T5 encode the clips (hub id or local folder)")
    p.add_argument("--out", required=True, help="cache folder (clips/*.safetensors, index.csv, cache.json, rejects.csv)")
    p.add_argument("--csv", default="instructions.csv", help="CSV in the dataset folder (privacy_preserved.csv for P2FT)")
    p.add_argument("--frames", dest="frame_buckets", type=_ints, default=(49,), help="frame buckets, e.g. 49 or 17,33,49")
    p.add_argument("--fps", dest="target_fps", type=float, default=8.0, help="target frame rate of the sampled frames")
    p.add_argument("--heights", type=_ints, default=(480, 720), help="height buckets")
    p.add_argument("--widths", type=_ints, default=(720, 960), help="width buckets")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda:<local rank> if a GPU is present, else cpu")
    p.add_argument("--vae-tiling", action="store_true", help="encode in tiles (less GPU memory)")


@command("prepare", "encode a dataset's clips (VAE latents + T5 embeddings) into a training cache; torchrun shards it", _prepare_args)
def _prepare(args: argparse.Namespace) -> int:
    from ophora.data.prepare import PrepareConfig, prepare

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    summary = prepare(PrepareConfig(**fields))
    print(f"{args.out}: {summary.made} clips encoded, {summary.skipped} already there, {summary.rejected} rejected")
    return 1 if summary.rejected else 0


# ---------------------------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (configs/tpt.yaml, configs/p2ft.yaml, configs/tiny-*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. steps=100 out=runs/x")


@command("train", "train or fine-tune the transformer (TPT, P2FT); resumes; accelerate launch for many GPUs", _train_args)
def _train(args: argparse.Namespace) -> None:
    from ophora.train.config import load_config
    from ophora.train.trainer import train

    print(train(load_config(args.config, args.overrides)))


# ---------------------------------------------------------------------------------------------- demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="folder for everything the demo writes (default: ./demo)")
    p.add_argument("--model", default=None, help="sample with this model instead of the untrained tiny one")


@command("demo", "run the pipeline end to end on a tiny untrained model and write a gallery", _demo_args)
def _demo(args: argparse.Namespace) -> None:
    from ophora.demo import run_demo

    print(run_demo(args.out, model=args.model))


# ---------------------------------------------------------------------------------------------- curate


def _curate_args(p: argparse.ArgumentParser) -> None:
    from ophora.curate.refine import add_refine_arguments

    p.add_argument("input", help="folder of narrated videos (recursive) with .srt/.vtt/.json sidecars of the same stem")
    p.add_argument("--out", required=True, help="dataset folder: clips/, instructions.csv, privacy_preserved.csv, "
                                                "manifest.parquet, summary.json, report.html")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: all cores)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="ray needs the extra ophora[ray]")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--clip-mode", choices=["copy", "reencode"], default="copy",
                   help="copy: no re-encoding, clips start at a keyframe; reencode: exact frames, H.264")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality for --clip-mode reencode")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--target-seconds", type=float, default=5.5)
    p.add_argument("--min-width", type=int, default=720)
    p.add_argument("--min-height", type=int, default=480)
    p.add_argument("--privacy", choices=["ocr", "vlm", "off"], default="ocr",
                   help="ocr: PP-OCRv4 text detector + static-overlay check; vlm: an OpenAI-compatible VLM endpoint")
    p.add_argument("--vlm-url", default=None, help="e.g. http://localhost:8001/v1 (key from OPHORA_LLM_API_KEY)")
    p.add_argument("--vlm-model", default=None, help="e.g. Qwen/Qwen2.5-VL-72B-Instruct, as the server names it")
    p.add_argument("--asr", choices=["faster-whisper"], default=None, help="transcribe videos without a sidecar")
    p.add_argument("--asr-model", default=None, help="faster-whisper model folder or id")
    add_refine_arguments(p)


@command("curate", "narrated surgery videos -> clips + instructions, with a privacy-preserved subset", _curate_args)
def _curate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ophora.curate.filters import FilterConfig
    from ophora.curate.pipeline import CurateConfig, curate
    from ophora.curate.privacy import PrivacyConfig
    from ophora.curate.refine import refine_config_from_args

    config = CurateConfig(
        input=Path(args.input), out=Path(args.out), workers=args.workers, engine=args.engine,
        ray_address=args.ray_address, clip_mode=args.clip_mode, crf=args.crf, min_s=args.min_seconds,
        max_s=args.max_seconds, target_s=args.target_seconds, asr=args.asr, asr_model=args.asr_model,
        filters=FilterConfig(min_width=args.min_width, min_height=args.min_height),
        privacy=PrivacyConfig(backend=args.privacy, vlm_url=args.vlm_url, vlm_model=args.vlm_model),
        refine=refine_config_from_args(args, default_cache_dir=Path(args.out) / "refine_cache"),
    )
    summary = curate(config)
    clips = summary["clips"]
    print(f"{clips['kept']} clips kept of {clips['candidates']} ({clips['privacy_preserved']} privacy-preserved) "
          f"-> {Path(args.out) / 'report.html'}")
    return 0


# ---------------------------------------------------------------------------------------------- make-sample-videos


def _samples_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to write the videos, their narration sidecars and ground_truth.json into")


@command("make-sample-videos", "write synthetic narrated cataract-surgery videos with known curation ground truth",
         _samples_args)
def _samples(args: argparse.Namespace) -> None:
    from ophora.curate.samples import make_sample_videos

    print(make_sample_videos(args.dir))


# ---------------------------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from ophora import __version__

    parser = argparse.ArgumentParser(prog="ophora", description="Ophora: text-guided ophthalmic surgical video generation.")
    parser.add_argument("--version", action="version", version=f"ophora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    order = ["demo", "make-sample-videos", "curate", "prepare", "train", "sample", "make-tiny-model"]
    for name in sorted(COMMANDS, key=lambda n: order.index(n) if n in order else len(order)):
        help_line, add_arguments, _ = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_line, description=help_line))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user mistakes become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command][2](args) or 0
    except OphoraError as exc:
        print(f"ophora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ophora {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
