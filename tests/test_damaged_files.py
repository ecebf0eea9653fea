"""Damaged files inside a run or a latent cache: one-line errors naming the file (exit 2) before any work, a damaged
newest checkpoint skipped for the previous one, damaged cache clips left out with a warning and counted, a
half-written metrics line dropped, and weights that became non-finite refused instead of exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ophora.cli import main
from ophora.core.errors import ConfigError
from ophora.core.latent_cache import intact_entries, read_index
from ophora.prepare.run import PrepareConfig, prepare
from ophora.train.trainer import train
from test_prepare import SMALL
from test_train import CONFIGS, cache, dataset, losses, tiny_config  # noqa: F401  (shared fixtures)

FAST = ["batch_size=1", "export=false", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def finished_run(tiny_model, cache, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4."""
    return train(tiny_config(tiny_model, cache, tmp_path_factory.mktemp("run") / "run", "steps=4", *FAST))


def cli_train(tiny_model, cache, out, capsys, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", str(CONFIGS / "tiny-tpt.yaml"), f"model={tiny_model}", f"cache={cache}", f"out={out}",
                 "validation_prompts=[]", "steps=4", *FAST, *extra])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return code, err.splitlines()[-1] if err else ""


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


# ------------------------------------------------------------------------------------------- run folders


def test_a_corrupt_run_record_is_named(finished_run, tiny_model, cache, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    (run / "run.json").write_text('{"identity": {"mod')
    code, line = cli_train(tiny_model, cache, run, capsys)
    assert code == 2 and str(run / "run.json") in line and "damaged" in line


@pytest.mark.parametrize("damage", ["truncated weights", "corrupt state",
                                    *(pytest.param(d, marks=pytest.mark.slow)
                                      for d in ("garbage weights", "state of another step", "missing optimizer"))])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(damage, finished_run, tiny_model, cache, tmp_path,
                                                                caplog):
    run = copy_of(finished_run, tmp_path)
    newest = run / "checkpoints" / "step-0000004"
    weights = newest / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage weights":
        weights.write_bytes(b"\x00garbage" * 100)
    elif damage == "corrupt state":
        (newest / "state.json").write_text('{"step": 4, "micro')
    elif damage == "state of another step":
        (newest / "state.json").write_text(json.dumps({"step": 2, "micro_step": 2, "skipped": 0}))
    else:
        (newest / "optimizer.bin").unlink()
    train(tiny_config(tiny_model, cache, run, "steps=4", *FAST))
    assert f"checkpoint {newest} is damaged and skipped" in caplog.text and "resuming from step-0000002" in caplog.text
    assert losses(run) == losses(finished_run)  # steps 3-4 trained again from step 2: the same numbers
    a, b = load_file(weights), load_file(finished_run / "checkpoints" / "step-0000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_checkpoint_damaged_is_one_line(finished_run, tiny_model, cache, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"")
    code, line = cli_train(tiny_model, cache, run, capsys)
    assert code == 2 and f"every checkpoint under {run / 'checkpoints'} is damaged" in line


def test_a_half_written_metrics_line_is_dropped(finished_run, tiny_model, cache, tmp_path, caplog):
    run = copy_of(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')
    train(tiny_config(tiny_model, cache, run, "steps=4", *FAST))
    assert "line 5 is damaged" in caplog.text
    assert losses(run) == losses(finished_run)


def test_weights_that_became_non_finite_are_refused_not_exported(tiny_model, cache, tmp_path, monkeypatch, capsys):
    class Diverging(torch.optim.AdamW):  # an update that overflows at step 2 (what a too high learning rate does)
        def step(self, closure=None):
            result = super().step(closure)
            first = self.param_groups[0]["params"][0]
            if int(self.state[first]["step"]) == 2:
                with torch.no_grad():
                    first.view(-1)[0] = float("inf")
            return result

    monkeypatch.setattr(torch.optim, "AdamW", Diverging)
    code, line = cli_train(tiny_model, cache, tmp_path / "run", capsys, "export=true", "checkpoint_every=1")
    assert code == 2 and "training diverged: the weights hold NaN/inf after step 2" in line
    assert "step-0000001" in line and not (tmp_path / "run" / "final").exists()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000001"]
    with pytest.raises(ConfigError, match="training diverged"):
        train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=4", *FAST, "export=true", "checkpoint_every=1"))


# ------------------------------------------------------------------------------------------- latent caches


def rewrite_clip(path: Path, **changes) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file({**load_file(path), **changes}, str(path), metadata=metadata)


DAMAGES = {
    "garbage": lambda p: p.write_bytes(b"not safetensors at all" * 50),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "header only": lambda p: p.write_bytes(p.read_bytes()[: 8 + int.from_bytes(p.read_bytes()[:8], "little")]),
    "empty": lambda p: p.write_bytes(b""),
    "deleted": lambda p: p.unlink(),
    "wrong shape": lambda p: rewrite_clip(p, latent_mean=torch.zeros(16, 3, 8, 8), latent_logvar=torch.zeros(16, 3, 8, 8)),
    "no embeddings": lambda p: save_file({k: v for k, v in load_file(p).items() if k != "prompt_embeds"}, str(p)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_kind_of_damaged_cache_clip_is_found_from_its_header(damage, cache, tmp_path):
    damaged = copy_of(cache, tmp_path)
    clip = damaged / "clips" / "case1_1.safetensors"
    DAMAGES[damage](clip)
    entries, bad = intact_entries(damaged, read_index(damaged))
    assert [e.clip_id for e in entries] == ["case1_0", "case2_0"] and [e.clip_id for e, _ in bad] == ["case1_1"]


def test_a_damaged_cache_clip_is_left_out_of_training_named_and_counted(cache, tiny_model, tmp_path, caplog):
    damaged = copy_of(cache, tmp_path)
    clip = damaged / "clips" / "case1_1.safetensors"
    DAMAGES["truncated"](clip)
    run = train(tiny_config(tiny_model, damaged, tmp_path / "run", "steps=2", "batch_size=1", "export=false"))
    record = json.loads((run / "run.json").read_text())
    assert record["damaged_clips"] == 1 and record["clips"] == 2
    assert f"cache clip {clip} is damaged and left out of training" in caplog.text
    assert len(losses(run)) == 2 and np.isfinite(losses(run)).all()


def test_prepare_encodes_a_damaged_clip_again(dataset, cache, tiny_model, tmp_path, caplog):
    damaged = copy_of(cache, tmp_path)
    clip = damaged / "clips" / "case2_0.safetensors"
    DAMAGES["truncated"](clip)
    summary = prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=damaged, **SMALL))
    assert (summary.made, summary.skipped) == (1, 2) and "is damaged" in caplog.text
    original = load_file(cache / "clips" / "case2_0.safetensors")
    assert all(torch.equal(v, load_file(clip)[k]) for k, v in original.items())
    assert (damaged / "index.csv").read_text() == (cache / "index.csv").read_text()


@pytest.mark.parametrize("file, content", [
    ("index.csv", "\x00\x01garbage"),
    ("index.csv", "clip id,file\ncase1_0,clips/case1_0.safetensors\n"),
    ("index.csv", 'clip id,file,instruction,frames,height,width,latent shape\nx,clips/x.safetensors,a,9,64,64,"[16, 3"\n'),
    ("index.csv", 'clip id,file,instruction,frames,height,width,latent shape\nx,../../etc/passwd,a,9,64,64,"[16,3,8,8]"\n'),
    ("cache.json", '{"format": 1, "mod'),
    ("cache.json", '["a list"]'),
    ("cache.json", '{"format": 1}'),
])
def test_a_damaged_cache_index_or_record_is_one_line(file, content, cache, tiny_model, tmp_path, capsys):
    damaged = copy_of(cache, tmp_path)
    (damaged / file).write_text(content)
    code, line = cli_train(tiny_model, damaged, tmp_path / "run", capsys)
    assert code == 2 and str(damaged / file) in line and "ophora prepare" in line
    assert not (tmp_path / "run").exists()  # found before any work


# ------------------------------------------------------------------------------------------- review studies


@pytest.mark.parametrize("damage", ["garbage", "another program's database"])
def test_a_damaged_study_database_is_one_line_for_every_review_command(damage, tmp_path, capsys):
    import sqlite3

    from review_helpers import make_samples

    study = tmp_path / "study"
    assert main(["review", "create", str(study), "--generated", str(make_samples(tmp_path / "samples", 1))]) == 0
    database = study / "study.sqlite"
    for f in study.glob("study.sqlite*"):
        f.unlink()
    if damage == "garbage":
        database.write_bytes(b"not a database " * 100)
    else:
        sqlite3.connect(database).executescript("CREATE TABLE notes (text TEXT);")
    capsys.readouterr()
    for argv in (["add-rater", str(study), "x"], ["serve", str(study), "--port", "0"],
                 ["export", str(study), "--out", str(tmp_path / "e")],
                 ["create", str(study), "--generated", str(tmp_path / "samples")]):
        assert main(["review", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert f"{database} is damaged or not a study database" in err
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------------------- curate records


@pytest.mark.parametrize("content", ["[1, 2]", '{"fingerprint": "fp"}', '{"fingerprint": "fp", "skipped": "", '
                                     '"detail": "", "rows": 5}', '{"fingerprint": "fp", "skipped": "", "detail": "", '
                                     '"rows": [7]}', '{"fingerprint": "f', "[" * 100_000, "\udcff"])
def test_a_damaged_or_foreign_source_record_means_the_source_is_processed_again(content, tmp_path):
    from ophora.curate.pipeline import SourceJob, _load_record

    job = SourceJob("in/a.mp4", "a.mp4", "a", [], "fp")
    (tmp_path / ".work").mkdir()
    (tmp_path / ".work" / "a.json").write_text(content, errors="surrogateescape")
    assert _load_record(job, tmp_path) is None
    (tmp_path / ".work" / "a.json").write_text(json.dumps({"fingerprint": "fp", "skipped": "", "detail": "",
                                                          "rows": [{"clip_id": "a_0", "decision": "drop"}]}))
    assert _load_record(job, tmp_path)["rows"] == [{"clip_id": "a_0", "decision": "drop"}]
