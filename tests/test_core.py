"""Shared infrastructure: the config mechanism, atomic files and claims, endpoints, failure records, the CLI's shape."""

from __future__ import annotations

import argparse
import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from ophora import cli
from ophora.core.config import add_options, apply_values, from_args, option
from ophora.core.endpoint import API_KEY_ENV, chat_completions_url, public_url, request_headers, scrub
from ophora.core.errors import ConfigError, InputError, failure_record
from ophora.core.files import atomic_path, claim_folder, write_json
from ophora.core.seeds import derived_seed


@dataclass
class Example:
    folder: Path = option(help="where", positional=True)
    steps: int = option(50, "how many")
    rate: float = option(0.5, "how fast")
    sizes: tuple[int, ...] = option((480, 720), "sizes")
    name: str | None = option(None, "a name")
    fast: bool = option(False, "go fast")
    mode: str = option("a", "a or b", choices=("a", "b"), aliases=("--the_mode",), deprecated=("--old-mode",))
    hidden: int = 3


def parse(*argv: str) -> Example:
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    return from_args(Example, parser.parse_args(argv))


def test_flags_come_from_the_fields_with_their_defaults_and_types():
    assert parse("x") == Example(Path("x"))
    got = parse("x", "--steps", "7", "--rate", "2", "--sizes", "16,32", "--name", "n", "--fast", "--the_mode", "b")
    assert got == Example(Path("x"), 7, 2.0, (16, 32), "n", True, "b")
    assert parse("x", "--no-fast").fast is False
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    text = parser.format_help()
    assert "how many (default: 50)" in text and "sizes (default: 480,720)" in text and "(default: off)" in text
    assert "--hidden" not in text and "--old-mode" not in text


def test_a_deprecated_flag_works_and_says_so(capsys):
    assert parse("x", "--old-mode", "b").mode == "b"
    assert "--old-mode is deprecated; use --mode" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1.5"], "wants int"), (["--rate", "nan"], "finite"), (["--rate", "inf"], "finite"),
    (["--sizes", "1,x"], "wants int"), (["--mode", "c"], "invalid choice"),
])
def test_bad_flag_values_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        parse("x", *argv)
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_yaml_values_are_typed_like_flags():
    config = Example(Path("x"))
    apply_values(config, {"steps": 3, "sizes": [1, 2], "fast": "yes"}, "test.yaml")
    assert (config.steps, config.sizes, config.fast) == (3, (1, 2), True)
    for values, message in [({"steps": True}, "wants a number"), ({"fast": 3}, "true or false"),
                            ({"rate": float("nan")}, "finite"), ({"stpes": 1}, "did you mean 'steps'")]:
        with pytest.raises(ConfigError, match=message):
            apply_values(Example(Path("x")), values, "test.yaml")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(target.parent.iterdir())) == 1


def test_claim_folder(tmp_path):
    out = tmp_path / "run"
    assert claim_folder(out, "rec.json", {"a": 1}, "run", "pick another") is False
    write_json(out / "rec.json", {"identity": {"a": 1, "b": [1, 2]}})
    assert claim_folder(out, "rec.json", {"a": 1, "b": (1, 2)}, "run", "pick another") is True
    with pytest.raises(InputError, match=r"made with other settings \(a differ\); pick another"):
        claim_folder(out, "rec.json", {"a": 2, "b": (1, 2)}, "run", "pick another")
    (out / "rec.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged"):
        claim_folder(out, "rec.json", {"a": 1}, "run", "pick another")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and holds no run"):
        claim_folder(other, "rec.json", {}, "run", "pick another")


def test_derived_seeds_depend_only_on_their_parts():
    assert derived_seed(42, "a", 0) == derived_seed(42, "a", 0) != derived_seed(42, "a", 1)
    assert 0 <= derived_seed(1) < 2**63


def test_endpoint_addresses_are_built_and_redacted(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://h/v1?api-version=2") == "https://h/v1/chat/completions?api-version=2"
    assert chat_completions_url("http://u:p@h/v1") == "http://h/v1/chat/completions"
    url = "https://user:pw@host/v1?api_key=SECRET&x=1"
    assert public_url(url) == "https://host/v1?api_key=***&x=1"
    assert request_headers("http://u%40x:p%3Aw@h/v1")["Authorization"] == "Basic " + base64.b64encode(b"u@x:p:w").decode()
    assert scrub("echo SECRET and pw", url) == "echo *** and ***"
    monkeypatch.setenv(API_KEY_ENV, "k3y")
    assert request_headers(url)["Authorization"] == "Bearer k3y"


def test_failure_records_name_the_type_and_log_the_traceback_at_debug(caplog):
    with caplog.at_level(logging.DEBUG):
        try:
            1 / 0
        except ZeroDivisionError as exc:
            record = failure_record(exc, logging.getLogger("t"), "clip c1")
    assert record == {"error_type": "ZeroDivisionError", "error": "division by zero"}
    assert any(r.levelno == logging.DEBUG and "Traceback" in r.getMessage() for r in caplog.records)
    assert failure_record(InputError("bad\nfile"), logging.getLogger("t"), "clip c2")["error"] == "bad file"


def test_old_command_names_still_work_with_a_deprecation_line(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert cli.main(["make-tiny-model", str(busy)]) == 2
    err = capsys.readouterr().err
    assert "'make-tiny-model' is deprecated; use 'ophora make-random-model'" in err
    assert "is not an empty folder" in err


def test_every_command_has_help_with_defaults(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        assert "usage: ophora" in capsys.readouterr().out


def test_train_configs_are_deltas_over_a_base(capsys):
    assert cli.main(["train", "p2ft", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "learning_rate: 5.0e-05" in printed and "compile_blocks: true" in printed  # p2ft over its base tpt
    assert "steps: 4500" in printed
