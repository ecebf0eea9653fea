"""SIGINT/SIGTERM/SIGKILL sent to real `python -m ophora` processes (train, curate, prepare, sample; prepare and
sample also in this process, at a chosen moment):
exit 130/143 with one line, a checkpoint at the step boundary that resumes exactly, no half-written files,
no surviving workers; and a planted pickle in a checkpoint that never runs."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ophora.cli import main
from ophora.core.errors import InputError
from ophora.core.media import read_video
from ophora.core.signals import Interrupted
from ophora.prepare.run import PrepareConfig, prepare
from ophora.train.trainer import train
from test_prepare import SMALL
from test_train import CONFIGS, cache, dataset, losses, tiny_config  # noqa: F401  (shared fixtures)

ROOT = Path(__file__).resolve().parents[1]
CONSTANT_LR = ["lr_schedule=constant", "warmup_steps=0", "batch_size=1", "export=false", "checkpoint_every=1000"]


# ------------------------------------------------------------------------------------------- helpers


def tagged(tag: str) -> list[int]:
    """Live processes (this test's command and all it started) carrying OPHORA_TEST_TAG=tag in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if f"OPHORA_TEST_TAG={tag}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def launch(args: list[str]) -> tuple[subprocess.Popen, str]:
    """`python -m ophora ARGS` in a session of its own (so a Ctrl-C can go to its whole process group)."""
    tag = uuid.uuid4().hex
    env = {**os.environ, "OPHORA_TEST_TAG": tag, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "ophora", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, tag


def wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the command to get going"
        time.sleep(0.1)


def ctrl_c(proc: subprocess.Popen) -> None:
    """What a terminal's Ctrl-C does: SIGINT to every process of the foreground group."""
    os.killpg(proc.pid, signal.SIGINT)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running {timeout} s after the signal") from None
    return proc.returncode, err


def no_survivors(tag: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = tagged(tag)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes survived their parent: {left}"


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------- train


def train_args(tiny_model, cache, out, *extra) -> list[str]:
    return ["train", str(CONFIGS / "tiny-tpt.yaml"), f"model={tiny_model}", f"cache={cache}", f"out={out}",
            "validation_prompts=[]", *extra]


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_train_checkpoints_at_the_step_boundary_and_resumes_exactly(signum, tiny_model, cache, tmp_path):
    run = tmp_path / "run"
    proc, tag = launch(train_args(tiny_model, cache, run, "steps=100000", *CONSTANT_LR))
    wait_for(lambda: (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 2,
             120, proc)
    ctrl_c(proc) if signum == signal.SIGINT else proc.send_signal(signum)
    code, err = finish(proc, 60)
    line = last_line(err)
    stopped = len(losses(run))
    checkpoint = run / "checkpoints" / f"step-{stopped:07d}"
    assert code == 128 + signum and line.startswith(f"ophora train: stopped by {signal.Signals(signum).name}")
    assert str(checkpoint) in line and "rerun the same command to resume" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [checkpoint.name]  # nothing half-written
    no_survivors(tag)
    # the rerun goes on from that checkpoint and gives exactly the uninterrupted run's losses and weights
    steps = f"steps={stopped + 2}"
    train(tiny_config(tiny_model, cache, run, steps, *CONSTANT_LR))
    whole = train(tiny_config(tiny_model, cache, tmp_path / "whole", steps, *CONSTANT_LR))
    assert losses(run) == losses(whole)
    name = f"step-{stopped + 2:07d}"
    a = load_file(run / "checkpoints" / name / "model.safetensors")
    b = load_file(whole / "checkpoints" / name / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_two_ctrl_c_stop_at_once_without_a_traceback(tiny_model, cache, tmp_path):
    run = tmp_path / "run"
    proc, tag = launch(train_args(tiny_model, cache, run, "steps=100000", *CONSTANT_LR))
    wait_for(lambda: (run / "metrics.jsonl").is_file(), 120, proc)
    ctrl_c(proc)
    ctrl_c(proc)
    code, err = finish(proc, 30)
    assert code == 130 and last_line(err).startswith("ophora train: stopped by SIGINT")
    no_survivors(tag)
    assert all((p / "state.json").is_file() for p in (run / "checkpoints").glob("step-*"))
    train(tiny_config(tiny_model, cache, run, f"steps={len(losses(run)) + 1}", *CONSTANT_LR))  # resumes


# ------------------------------------------------------------------------------------------- curate


@pytest.fixture(scope="module")
def narrated(narrated_videos) -> Path:
    return narrated_videos


def workers_started(tag: str) -> bool:
    return len(tagged(tag)) >= 4  # curate, its resource tracker and two pool workers


@pytest.mark.parametrize("how", ["sigterm", *(pytest.param(h, marks=pytest.mark.slow) for h in ("ctrl-c", "ctrl-c twice"))])
def test_curate_stops_within_seconds_and_leaves_no_workers(how, narrated, tmp_path):
    out = tmp_path / "out"
    proc, tag = launch(["curate", str(narrated), "--out", str(out), "--workers", "2"])
    wait_for(lambda: workers_started(tag), 120, proc)
    time.sleep(1.0)
    sent = time.monotonic()
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        ctrl_c(proc)
        if how == "ctrl-c twice":
            time.sleep(0.2)
            ctrl_c(proc)
    code, err = finish(proc, 30)
    assert time.monotonic() - sent < 10
    line = last_line(err)
    name = "SIGTERM" if how == "sigterm" else "SIGINT"
    assert code == (143 if how == "sigterm" else 130) and line.startswith(f"ophora curate: stopped by {name}"), err
    assert "source videos done" in line
    no_survivors(tag)
    for record in (out / ".work").glob("*.json"):  # what is done is recorded whole (the rerun starts from it)
        assert json.loads(record.read_text())["rows"]


def test_curate_workers_die_with_a_killed_parent(narrated, tmp_path):
    proc, tag = launch(["curate", str(narrated), "--out", str(tmp_path / "out"), "--workers", "2"])
    wait_for(lambda: workers_started(tag), 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    no_survivors(tag)


# ------------------------------------------------------------------------------------------- prepare and sample


def signal_during(monkeypatch, module, name: str, signum: int, calls: list) -> None:
    """Make `module.name` send `signum` to this process the first time it is called (then do its work)."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_prepare_finishes_the_clip_in_hand_then_stops_and_resumes(dataset, tiny_model, tmp_path, monkeypatch, capsys):
    import ophora.prepare.run as run

    out = tmp_path / "cache"
    calls: list = []
    signal_during(monkeypatch, run, "encode_clips", signal.SIGTERM, calls)
    args = ["prepare", str(dataset), "--model", str(tiny_model), "--out", str(out), "--frame-buckets", "9,17",
            "--heights", "64", "--widths", "64,96"]
    assert main(args) == 143
    line = last_line(capsys.readouterr().err)
    assert line.startswith("ophora prepare: stopped by SIGTERM; 1 clips encoded in this run, 2 left")
    assert len(calls) == 1 and len(list((out / "clips").glob("*.safetensors"))) == 1  # the clip in hand finished
    assert not (out / "cache.json").exists() and not list(out.rglob(".*partial*"))
    monkeypatch.undo()
    assert main(args) == 0
    reference = tmp_path / "reference"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=reference, **SMALL))
    for clip in (reference / "clips").iterdir():
        a, b = load_file(clip), load_file(out / "clips" / clip.name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "index.csv").read_text() == (reference / "index.csv").read_text()


def test_sample_abandons_the_video_in_hand_and_resumes(tiny_model, tmp_path, monkeypatch, capsys):
    import ophora.sample.run as run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Polish the posterior capsule.\nInject viscoelastic into the anterior chamber.\n")
    out = tmp_path / "samples"
    args = ["sample", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(out), "--frames", "9",
            "--height", "64", "--width", "64", "--steps", "2"]
    calls: list = []
    signal_during(monkeypatch, run, "generate", signal.SIGINT, calls)
    assert main(args) == 130
    line = last_line(capsys.readouterr().err)
    assert line.startswith("ophora sample: stopped by SIGINT; 0 videos made in this run, 2 left")
    assert not list(out.rglob("*.mp4")) and not list(out.rglob(".*partial*"))
    monkeypatch.undo()
    assert main(args) == 0
    assert len(list(out.rglob("*.mp4"))) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_real_prepare_process_finishes_the_clip_in_hand_and_resumes_exactly(signum, dataset, tiny_model, tmp_path):
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    ids = [f"clip{i:03d}" for i in range(300)]
    for clip_id in ids:
        shutil.copy(dataset / "clips" / "case1_0.mp4", data / "clips" / f"{clip_id}.mp4")

    def listing(count: int) -> None:
        (data / "instructions.csv").write_text("clip id,instruction\n" + "".join(
            f"{c},Polish the posterior capsule {i}.\n" for i, c in enumerate(ids[:count])))

    listing(len(ids))
    out = tmp_path / "cache"
    args = ["prepare", str(data), "--model", str(tiny_model), "--frame-buckets", "9", "--heights", "64",
            "--widths", "64"]
    proc, tag = launch([*args, "--out", str(out)])
    wait_for(lambda: len(list((out / "clips").glob("clip*.safetensors"))) >= 2, 180, proc)
    ctrl_c(proc) if signum == signal.SIGINT else proc.send_signal(signum)
    code, err = finish(proc, 30)
    line = last_line(err)
    done = len(list((out / "clips").glob("clip*.safetensors")))
    assert code == 128 + signum and line.startswith(f"ophora prepare: stopped by {signal.Signals(signum).name}; "
                                                    f"{done} clips encoded in this run, {len(ids) - done} left")
    no_survivors(tag)
    assert not (out / "cache.json").exists() and not list(out.rglob(".*partial*"))
    listing(done + 2)  # the rerun: the same clips, fewer of them to keep it short
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert (out / "index.csv").read_text() == (tmp_path / "whole" / "index.csv").read_text()
    for clip in (tmp_path / "whole" / "clips").iterdir():
        a, b = load_file(clip), load_file(out / "clips" / clip.name)
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["sigterm", pytest.param("ctrl-c twice", marks=pytest.mark.slow)])
def test_a_real_sample_process_stops_at_once_and_resumes_to_the_same_videos(how, tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Polish the posterior capsule, pass {i}.\n" for i in range(400)))
    out = tmp_path / "samples"
    args = ["sample", "--model", str(tiny_model), "--prompts", str(prompts), "--frames", "9", "--height", "32",
            "--width", "32", "--steps", "1"]
    proc, tag = launch([*args, "--out", str(out)])
    wait_for(lambda: len(list(out.glob("*/0.json"))) >= 2, 180, proc)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        ctrl_c(proc)
        ctrl_c(proc)
    code, err = finish(proc, 30)
    assert code == (143 if how == "sigterm" else 130)
    assert last_line(err).startswith(f"ophora sample: stopped by {'SIGTERM' if how == 'sigterm' else 'SIGINT'}")
    no_survivors(tag)
    made = sorted(p.parent.name for p in out.glob("*/0.json"))
    assert 2 <= len(made) < 400 and not list(out.rglob(".*partial*"))
    assert sorted(p.parent.name for p in out.glob("*/0.mp4")) == made  # no video without its record, or half-written
    first = prompts.read_text().splitlines()[: len(made) + 3]
    prompts.write_text("\n".join(first) + "\n")  # the rerun: the same prompts, fewer of them to keep it short
    assert main([*args, "--out", str(out)]) == 0
    (tmp_path / "few.txt").write_text(prompts.read_text())
    assert main([*args, "--prompts", str(tmp_path / "few.txt"), "--out", str(tmp_path / "whole")]) == 0
    for clip in sorted(p.name for p in (tmp_path / "whole").iterdir() if p.is_dir()):
        a, b = read_video(out / clip / "0.mp4")[0], read_video(tmp_path / "whole" / clip / "0.mp4")[0]
        assert np.array_equal(a, b), clip


# ------------------------------------------------------------------------------------------- planted pickles


class Payload:
    """Unpickling this runs a shell command (what an attacker would plant in a run folder)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_planted_pickle_in_a_checkpoint_never_runs(tiny_model, cache, tmp_path, caplog):
    run = tmp_path / "run"
    config = ["batch_size=1", "export=false", "checkpoint_every=1", "keep_checkpoints=3"]
    train(tiny_config(tiny_model, cache, run, "steps=3", *config))
    marker = tmp_path / "owned"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.is_file()
    marker.unlink()
    step1, step2, step3 = (run / "checkpoints" / f"step-000000{i}" for i in (1, 2, 3))
    (step3 / "custom_checkpoint_0.pkl").write_bytes(payload)  # what accelerate unpickles fully
    torch.save(Payload(marker), step2 / "optimizer.bin")
    torch.save(Payload(marker), step1 / "random_states_0.pkl")
    train(tiny_config(tiny_model, cache, run, "steps=4", *config))
    assert not marker.exists()
    assert "checkpoint " + str(step3) + " is damaged and skipped" in caplog.text and "custom_checkpoint_0.pkl" in caplog.text
    assert str(step2) + " is damaged and skipped" in caplog.text
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    whole = train(tiny_config(tiny_model, cache, tmp_path / "whole", "steps=4", *config))
    np.testing.assert_array_equal(losses(run), losses(whole))  # resumed from step 1: the same run
    for checkpoint in (run / "checkpoints").iterdir():
        (checkpoint / "custom_checkpoint_0.pkl").write_bytes(payload)
    with pytest.raises(InputError, match="every checkpoint under .* is damaged"):
        train(tiny_config(tiny_model, cache, run, "steps=5", *config))
    assert not marker.exists()


def test_interrupted_carries_the_exit_code():
    assert Interrupted(signal.SIGINT).exit_code == 130 and Interrupted(signal.SIGTERM).exit_code == 143
    assert Interrupted(signal.SIGTERM, "x").message() == "stopped by SIGTERM; x; rerun the same command to resume"
