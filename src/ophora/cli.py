"""The `ophora` command: each subcommand's flags are made from its stage's config dataclass; it parses and calls.

Exit codes (core/errors.py): 0 done, 1 some items failed (listed in the outputs; a rerun retries them),
2 a one-line error before or instead of the work, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ophora.core.config import add_options, from_args, option
from ophora.core.files import check_output_folder
from ophora.core.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, LOG_FILE, OphoraError
from ophora.core.signals import Interrupted, exit_on_signals, ignore_signals, kill_workers, signals_ignored

log = logging.getLogger("ophora")


@dataclass(frozen=True)
class Command:
    """A subcommand: its stage's config class, named as 'module:attribute' (imported lazily), and the function
    running it. A command with `sub` commands (`ophora review create ...`) has no config of its own."""

    help: str
    config: str = ""
    run: Callable[[object], int | None] | None = None
    aliases: tuple[str, ...] = ()
    sub: dict[str, "Command"] | None = None
    outputs: tuple[str, ...] = ()  # config fields naming folders it writes: checked writable before it runs


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------- the small commands


@dataclass
class DemoConfig:
    out: Path = option(Path("demo"), "folder for everything the demo writes")
    model: str | None = option(None, "sample the twelve phases with this pipeline instead of the shipped mini model")
    steps: int = option(20, "denoising steps of the twelve phases' videos")
    frames: int | None = option(None, "frames of the twelve phases' videos, 8k+1 (default: the model's)")
    pipeline: bool = option(True, "also run the whole path (curate, prepare, TPT, P2FT, sample) on a tiny random model")


@dataclass
class RandomModelConfig:
    dir: Path = option(help="new or empty folder to write the pipeline into", positional=True)
    seed: int = option(0, "seed of the random weights")
    size: str = option("tiny", "tiny: seconds on a CPU; small: a moderate model for learning checks; 2b: the "
                               "published CogVideoX-2b size, for benchmarks (about 7 GB)", choices=("tiny", "small", "2b"))


@dataclass
class NarratedVideosConfig:
    dir: Path = option(help="folder to write the videos, their narration sidecars and ground_truth.json into",
                       positional=True)


@dataclass
class TrainArgs:
    config: str = option(help="YAML config (tpt, p2ft, tiny-tpt, tiny-p2ft shipped; or a path)", positional=True)
    overrides: list[str] = option([], "override config keys, e.g. steps=100 out=runs/x (--print-config lists all keys)",
                                  positional=True, metavar="key=value")
    print_config: bool = option(False, "print the resolved config as YAML and exit")


def _demo(c: DemoConfig) -> None:
    print(_load("ophora.demo:run_demo")(c.out, model=c.model, steps=c.steps, frames=c.frames, pipeline=c.pipeline))


def _random_model(c: RandomModelConfig) -> None:
    print(_load("ophora.synthetic.random_pipeline:make_random_model")(c.dir, seed=c.seed, size=c.size))


def _narrated_videos(c: NarratedVideosConfig) -> None:
    print(_load("ophora.synthetic.narrated_videos:make_narrated_videos")(c.dir))


def _surgery_world(config) -> None:
    print(_load("ophora.synthetic.surgery_world:make_surgery_world_cli")(config))


def _train(c: TrainArgs) -> None:
    import dataclasses

    import yaml

    config = _load("ophora.train.config:load_config")(c.config, c.overrides)
    if c.print_config:
        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
        return
    check_output_folder(config.out)
    print(_load("ophora.train.trainer:train")(config))


def _curate(config) -> int:
    summary = _load("ophora.curate.pipeline:curate")(config)
    clips = summary["clips"]
    print(f"{clips['kept']} clips kept of {clips['candidates']} ({clips['privacy_preserved']} privacy-preserved) "
          f"-> {config.out / 'report.html'}")
    return EXIT_PARTIAL if summary["sources"].get("failed") or summary["clips"].get("failed") else EXIT_OK


def _prepare(config) -> int:
    summary = _load("ophora.prepare.run:prepare")(config)
    print(f"{config.out}: {summary.made} clips encoded, {summary.skipped} already there, {summary.rejected} rejected, "
          f"{summary.failed} failed")
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def _sample(config) -> int:
    if _load("ophora.train.export:is_checkpoint")(config.model):  # any checkpoint can be sampled (exported once)
        config.model = str(_load("ophora.train.export:checkpoint_pipeline")(Path(config.model)))
    summary = _load("ophora.sample.run:sample")(config)
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def _review_create(config) -> int:
    result = _load("ophora.review.study:create_study")(config)
    print(f"{config.study}: {result.added} videos added, {result.videos} in the study")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.admin_link:
        print(f"admin link (progress view; keep it private, it is shown only now): {result.admin_link}")
    return EXIT_OK


def _review_add_rater(config) -> int:
    rater = _load("ophora.review.study:add_rater")(config)
    what = "admin link" if config.admin else f"link of {rater.name} ({rater.videos} videos)"
    print(f"{what}; send it privately, it is shown only now: {rater.link}")
    return EXIT_OK


def _review_serve(config) -> int:
    _load("ophora.review.server:serve")(config)
    return EXIT_OK


def _review_export(config) -> int:
    print(_load("ophora.review.export:export")(config))
    return EXIT_OK


def _export(config) -> int:
    print(_load("ophora.train.export:export_checkpoint")(config))
    return EXIT_OK


def _evaluate(config) -> int:
    result = _load("ophora.evaluate.run:evaluate")(config)
    shown = ", ".join(f"{k} {result[k]:.4g}" for k in ("fid", "fvd", "clipscore", "leakage_rate", "memorisation_rate",
                                                       "temporal_consistency") if result.get(k) is not None)
    print(f"{shown or 'no metric computed'} -> {config.out / 'metrics.json'}")
    return EXIT_OK


def _downstream(config) -> int:
    result = _load("ophora.downstream.run:downstream")(config)
    shown = ", ".join(f"{name} {100 * run['test']['segment']['top1']:.2f}%" for name, run in result["runs"].items())
    if _load("ophora.core.ranks:init_ranks")().rank == 0:  # under torchrun, one line for all the processes
        print(f"phase top-1 on {result['splits']['test']['videos']} test videos: {shown}; {result['refused']} rows "
              f"refused -> {config.out / 'report.html'}")
    return EXIT_PARTIAL if result["failed"] else EXIT_OK


COMMANDS: dict[str, Command] = {
    "demo": Command("the twelve phases from the shipped mini model, and the whole path on a tiny one",
                    "ophora.cli:DemoConfig", _demo, outputs=("out",)),
    "make-narrated-videos": Command("write synthetic narrated cataract-surgery videos with known curation ground "
                                    "truth", "ophora.cli:NarratedVideosConfig", _narrated_videos,
                                    aliases=("make-sample-videos",), outputs=("dir",)),
    "make-surgery-world": Command("write a procedural world of narrated surgeries: the twelve Cataract-1K phases "
                                  "with their own looks, narrations, overlays on a known share, Cataract-1K "
                                  "annotations and ground truth", "ophora.synthetic.surgery_world:SurgeryWorldConfig",
                                  _surgery_world, outputs=("dir",)),
    "curate": Command("narrated surgery videos -> clips + instructions, with a privacy-preserved subset",
                      "ophora.curate.pipeline:CurateConfig", _curate, outputs=("out",)),
    "prepare": Command("encode a dataset's clips (VAE latents + T5 embeddings) into a training cache; torchrun "
                       "shards it", "ophora.prepare.run:PrepareConfig", _prepare, outputs=("out",)),
    "train": Command("train or fine-tune the transformer (TPT, P2FT); resumes; accelerate launch for many GPUs",
                     "ophora.cli:TrainArgs", _train),
    "sample": Command("generate videos from prompts (multi-GPU with torchrun), resumable",
                      "ophora.sample.config:SampleConfig", _sample, outputs=("out",)),
    "export": Command("write a diffusers pipeline folder from any checkpoint of a training run (RUN/checkpoints/"
                      "step-N), to sample or evaluate it", "ophora.train.export:ExportConfig", _export, outputs=("out",)),
    "evaluate": Command("FID, FVD, CLIPScore, privacy leakage, memorisation and temporal consistency of generated "
                        "videos against real ones", "ophora.evaluate.run:EvaluateConfig", _evaluate,
                        outputs=("out", "cache")),
    "downstream": Command("phase recognition (MViTv2, R(2+1)D) trained on real videos with and without generated "
                          "ones, tested on the same held-out real videos", "ophora.downstream.config:DownstreamConfig",
                          _downstream, outputs=("out",)),
    "make-random-model": Command("write a randomly initialised CogVideoX pipeline (diffusers layout) for tests, the "
                                 "demo and benchmarks", "ophora.cli:RandomModelConfig", _random_model,
                                 aliases=("make-tiny-model",), outputs=("dir",)),
    "review": Command("a blinded web app in which ophthalmologists rate generated videos", sub={
        "create": Command("define a study (or add videos to one): videos, criteria, per-rater random orders",
                          "ophora.review.config:CreateConfig", _review_create, outputs=("study",)),
        "add-rater": Command("add a rater and print their personal link (only a hash of it is stored)",
                             "ophora.review.config:AddRaterConfig", _review_add_rater),
        "serve": Command("serve the rater pages and the admin's progress view",
                         "ophora.review.config:ServeConfig", _review_serve),
        "export": Command("write every answer as CSV plus the summary (HTML with plots, CSV, JSON)",
                          "ophora.review.config:ExportConfig", _review_export, outputs=("out",)),
    }),
}
DEPRECATED = {alias: name for name, c in COMMANDS.items() for alias in c.aliases}


# ---------------------------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from ophora import __version__

    parser = argparse.ArgumentParser(prog="ophora", description="Ophora: text-guided ophthalmic surgical video generation.")
    parser.add_argument("--version", action="version", version=f"ophora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_commands(parser, COMMANDS, "command")
    return parser


def _add_commands(parser: argparse.ArgumentParser, commands: dict[str, Command], dest: str) -> None:
    sub = parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help, aliases=list(command.aliases))
        if command.sub:
            _add_commands(p, command.sub, f"{dest}_{name}")
        else:
            add_options(p, _load(command.config))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user mistakes become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    name = DEPRECATED.get(args.command, args.command)
    if name != args.command:
        print(f"ophora: '{args.command}' is deprecated; use 'ophora {name}'", file=sys.stderr)
    command = COMMANDS[name]
    while command.sub:
        sub_name = getattr(args, f"command_{name}")
        name, command = f"{name} {sub_name}", command.sub[sub_name]
    log_file = None
    try:
        with exit_on_signals():  # SIGTERM too ends the command with one line (core/signals.py)
            config = from_args(_load(command.config), args)
            for field in command.outputs:
                if getattr(config, field) is not None:  # an optional folder left out (evaluate's --cache)
                    check_output_folder(getattr(config, field))
            log_file = _log_to_file(config)
            return command.run(config) or EXIT_OK
    except OphoraError as exc:
        print(f"ophora {name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno not in _REFUSED_WRITES:
            raise
        log.debug("the file system refused:", exc_info=True)
        print(f"ophora {name}: error: {exc.filename or 'a file'}: {exc.strerror}; free some space, fix the permissions "
              "or choose another output folder, then rerun to resume", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        with signals_ignored():  # a further Ctrl-C must not turn this line into a traceback
            log.debug("stopped: %s", stop.message())
            print(f"ophora {name}: {stop.message()}", file=sys.stderr)
        if argv is None:  # the `ophora` process itself, which exits now: a further signal must not kill it on the way
            ignore_signals()
        return stop.exit_code
    finally:
        if log_file is not None:
            logging.getLogger().removeHandler(log_file)
            log_file.close()
        if argv is None:  # the `ophora` process, which exits now: no worker may hold it up
            kill_workers()


# The file system refused a write that the up-front checks could not foresee (a disk filling up during the run).
_REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


class _RunLog(logging.FileHandler):
    """OUT/ophora.log, written once the stage has made its output folder (a refused run leaves nothing behind)."""

    def emit(self, record: logging.LogRecord) -> None:
        if Path(self.baseFilename).parent.is_dir():
            super().emit(record)


def _log_to_file(config) -> logging.Handler | None:
    """Debug logging (tracebacks of failed items among it) into OUT/ophora.log, for commands with an output folder.

    The console keeps its level; only the file gets the debug lines.
    """
    out = getattr(config, "out", None)
    if out is None:
        return None
    root = logging.getLogger()
    for console in root.handlers:
        console.setLevel(max(console.level, root.level))
    handler = _RunLog(Path(out).absolute() / LOG_FILE, encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return handler


if __name__ == "__main__":
    raise SystemExit(main())
