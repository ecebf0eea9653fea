"""The one config mechanism: every stage's settings are a dataclass, and its CLI flags are made from the fields.

A field declared with `option(default, "help text", ...)` becomes one flag: its name (`--field-name`, or
`flag=`), type, default and help are written once, on the field. Nested config dataclasses (curate's
filters, privacy and refiner settings) contribute their own options, with `dest` paths like
`privacy.backend`. YAML files (train) go through the same typed coercion as the flags, so a value means
the same thing wherever it comes from.

    @dataclass
    class SampleConfig:
        steps: int = option(50, "denoising steps")

    add_options(parser, SampleConfig)        # --steps N   denoising steps (default: 50)
    config = from_args(SampleConfig, args)   # SampleConfig(steps=args.steps)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ophora.core.errors import ConfigError

_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
           positional: bool = False, cli: bool = True, aliases: tuple[str, ...] = (), metavar: str | None = None,
           group: str | None = None, deprecated: tuple[str, ...] = ()) -> Any:
    """A config field with its CLI flag. `cli=False` keeps it out of the CLI (a Python-only setting).

    `aliases` are other accepted spellings (e.g. the paper authors' `--guidance_scale`); `deprecated` are
    old names that still work but print a line naming the new flag.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "positional": positional, "cli": cli, "aliases": aliases,
            "metavar": metavar, "group": group, "deprecated": deprecated}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap(hint) -> tuple[Any, bool]:
    """(the type inside an Optional, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` (from YAML or parsed from a flag) as the field's type, or a ConfigError naming the setting."""
    hint, optional = _unwrap(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} needs a value of type {_type_name(hint)}, got nothing")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name} wants a list, got {value!r}")
        converted = [coerce(name, v, args[0]) for v in items]
        return tuple(converted) if origin is tuple else converted
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{name} wants true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} wants a number, got {value!r}")
        try:
            number = hint(value) if hint is float or not isinstance(value, float) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{name} wants {_type_name(hint)}, got {value!r}") from None
        if hint is int and (isinstance(number, float) and not number.is_integer()):
            raise ConfigError(f"{name} wants a whole number, got {value!r}")
        number = hint(number)
        if hint is float and not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return number
    if hint in (str, Path):
        if not isinstance(value, (str, Path)) or "\x00" in str(value):
            raise ConfigError(f"{name} wants text, got {value!r}")
        return hint(value)
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not _NO_DEFAULT:
        value = f.default
    elif f.default_factory is not _NO_DEFAULT:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def add_options(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """Add one argument per CLI field of the config dataclass `cls` (and of its nested config dataclasses)."""
    hints = _hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(hint):
            add_options(parser, hint, prefix=f"{prefix}{f.name}.")
            continue
        if not f.metadata.get("cli", False):
            continue
        group_name = f.metadata.get("group")
        target = parser
        if group_name:
            target = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        dest = prefix + f.name
        help_text = f.metadata.get("help", "")
        required = f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT  # type: ignore[misc]
        kwargs: dict[str, Any] = {"help": help_text + _default_text(f)}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if hint is bool:
            kwargs.pop("metavar", None)
            target.add_argument(_flag(f), *f.metadata.get("aliases", ()), dest=dest, default=argparse.SUPPRESS,
                                action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.metadata.get("positional") and typing.get_origin(hint) is list:
            target.add_argument(dest, nargs="*", default=[], **kwargs)
            continue
        kwargs["type"] = _text_parser(dest, hints[f.name])
        if f.metadata.get("positional"):
            target.add_argument(dest, **kwargs) if required else target.add_argument(dest, nargs="?", **kwargs)
            continue
        kwargs["default"] = None if required else argparse.SUPPRESS
        target.add_argument(_flag(f), *f.metadata.get("aliases", ()), dest=dest, required=required, **kwargs)
        for old in f.metadata.get("deprecated", ()):
            target.add_argument(old, dest=dest, type=kwargs["type"], default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                action=_Deprecated, new=_flag(f))


class _Deprecated(argparse.Action):
    """An old flag name: stores the value like the new one and says so."""

    def __init__(self, *args, new: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ophora: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _text_parser(name: str, hint):
    """An argparse `type` turning the flag's text into the field's type (one ConfigError message for all)."""
    inner, _ = _unwrap(hint)

    def parse(text: str):
        try:
            if inner is str or inner is Path:
                return coerce(name, text, inner)
            return coerce(name, text, hint)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = _type_name(inner)
    return parse


def from_args(cls, args: argparse.Namespace, prefix: str = ""):
    """The config dataclass `cls` built from the flags `add_options` added (absent flags keep their defaults)."""
    values = vars(args)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = from_args(hint, args, prefix=f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def apply_values(config, values: dict, source: str) -> None:
    """Set fields of `config` from a mapping (a YAML file, key=value overrides), typed and checked by name."""
    hints = _hints(type(config))
    for key, value in values.items():
        if key not in hints:
            near = difflib.get_close_matches(key, hints, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        setattr(config, key, coerce(f"config key {key!r}", value, hints[key]))
