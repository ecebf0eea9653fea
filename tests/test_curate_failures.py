"""curate's failure policy (core/errors.py): an unexpected exception in one source, while it is planned or
while it is processed, is recorded with its type and reason, its traceback goes to OUT/ophora.log, the other
sources are curated and the dataset files are written; the exit code is 1 and a rerun retries only the
failed sources."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ophora import cli
from ophora.curate import pipeline
from ophora.synthetic.narrated_videos import narrated_plan, write_narrated_video, write_sidecar

STEMS = ("fine", "planbug", "procbug")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Three copies of one 20-s narrated video (cataract_c: three clips to keep) with their .json sidecars."""
    made = tmp_path_factory.mktemp("made")
    video = narrated_plan()[2]
    write_narrated_video(video, made, fps=15.0, seed=0)
    sidecar = write_sidecar(video, made)
    folder = tmp_path_factory.mktemp("sources")
    for stem in STEMS:
        shutil.copy(made / f"{video.stem}.mp4", folder / f"{stem}.mp4")
        shutil.copy(sidecar, folder / f"{stem}{sidecar.suffix}")
    return folder


def _failing(monkeypatch, name: str, stem: str, error: Exception) -> list[str]:
    """Make `pipeline.<name>` raise `error` for the source `stem`; returns the stems it was called for."""
    real, calls = getattr(pipeline, name), []

    def wrapped(path, *args, **kwargs):
        calls.append(Path(path).stem)
        if Path(path).stem == stem:
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, name, wrapped)
    return calls


def _clip_stems(out: Path) -> set[str]:
    with open(out / "instructions.csv", newline="", encoding="utf-8") as f:
        return {row["clip id"].rsplit("_", 1)[0] for row in csv.DictReader(f)}


def test_an_unexpected_error_fails_its_source_only_and_a_rerun_retries_it(sources, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["curate", str(sources), "--out", str(out), "--workers", "1"]
    with monkeypatch.context() as patch:
        _failing(patch, "read_subtitles", "planbug", RuntimeError("bug while reading the narration"))
        _failing(patch, "scan_source", "procbug", ValueError("bug while scanning"))
        assert cli.main(argv) == 1  # some sources failed
    assert "Traceback" not in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["failed"] == 2 and summary["sources"]["skipped_by_reason"] == {"failed": 2}
    skipped = pd.read_csv(out / "skipped_sources.csv").set_index("source")
    assert skipped.loc["planbug.mp4", "detail"] == "RuntimeError: bug while reading the narration"
    assert skipped.loc["procbug.mp4", "detail"] == "ValueError: bug while scanning"
    assert set(skipped["reason"]) == {"failed"}
    assert _clip_stems(out) == {"fine"} and summary["clips"]["kept"] == 3  # the rest curated, files written
    assert summary["clips"]["failed"] == 0
    assert pd.read_parquet(out / "manifest.parquet")["source"].unique().tolist() == ["fine.mp4"]
    log = (out / "ophora.log").read_text()
    assert log.count("Traceback (most recent call last)") >= 2 and "bug while reading the narration" in log and "bug while scanning" in log
    assert sorted(p.stem for p in (out / ".work").glob("*.json")) == ["fine"]  # failures leave no record

    scanned = _failing(monkeypatch, "scan_source", "no such source", RuntimeError())  # counts the scans only
    assert cli.main(argv) == 0
    assert sorted(scanned) == ["planbug", "procbug"]  # the finished source is read back from its record
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["failed"] == 0 and summary["clips"]["kept"] == 9 and _clip_stems(out) == set(STEMS)


def test_a_clip_that_could_not_be_written_makes_the_exit_code_1(tmp_path, monkeypatch):
    """A clip dropped as `write_failed` is no decision about its content: like a failed source, exit 1."""
    def summary(failed_sources: int, failed_clips: int):
        def fake_curate(config) -> dict:
            return {"sources": {"failed": failed_sources}, "clips": {"candidates": 2, "kept": 1, "privacy_preserved": 1,
                                                                    "failed": failed_clips}}
        return fake_curate

    source = tmp_path / "in"
    source.mkdir()
    for sources_failed, clips_failed, code in ((0, 0, 0), (0, 1, 1), (1, 0, 1)):
        monkeypatch.setattr(pipeline, "curate", summary(sources_failed, clips_failed))
        assert cli.main(["curate", str(source), "--out", str(tmp_path / "out")]) == code
