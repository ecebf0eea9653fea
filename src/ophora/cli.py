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
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="tiny: seconds on a CPU; small: a moderate model for learning checks")


@command("make-tiny-model", "write a random CogVideoX pipeline (diffusers layout) for tests and the demo", _tiny_args)
def _tiny(args: argparse.Namespace) -> None:
    from ophora.models import make_tiny_model

    print(make_tiny_model(args.dir, seed=args.seed, size=args.size))


# ---------------------------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from ophora import __version__

    parser = argparse.ArgumentParser(prog="ophora", description="Ophora: text-guided ophthalmic surgical video generation.")
    parser.add_argument("--version", action="version", version=f"ophora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_line, add_arguments, _) in COMMANDS.items():
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
