"""`ophora downstream` over processes and signals: two torchrun processes (gloo, CPU) equal one process with the
same shards and batch; SIGINT/SIGTERM to a real process mid-epoch saves a checkpoint there, exits 130/143 with one
line, leaves no worker behind, and the rerun ends exactly where the uninterrupted run ends; the shard arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ophora.cli import main
from ophora.core.ranks import Ranks
from ophora.downstream.config import DownstreamConfig
from ophora.downstream.shards import NormStatistics, gather_rows, own_shards, step_shards
from ophora.synthetic.phase_videos import PHASES, make_phase_cases
from test_interrupts import ROOT, ctrl_c, finish, last_line, launch, no_survivors, wait_for
from test_prepare import free_port


pytestmark = pytest.mark.usefixtures("one_thread")  # as the subprocesses (OMP_NUM_THREADS=1)


@pytest.fixture(scope="module")
def surgeries(tmp_path_factory) -> Path:
    """Six short synthetic surgeries of the four phases: four train, one validation and one test case."""
    root = tmp_path_factory.mktemp("surgeries")
    make_phase_cases(root, {f"case_{i}": list(PHASES) for i in range(1, 7)}, seconds=2.0)
    (root / "splits.csv").write_text("video,split\n" + "".join(
        f"case_{i},{'train' if i <= 4 else 'val' if i == 5 else 'test'}\n" for i in range(1, 7)))
    return root


def args(root: Path, out: Path, *extra: str) -> list[str]:
    # 16 training clips in global batches of 2 shards x 6: the last batch has a shard of 4 and an empty one
    return ["downstream", "--annotations", str(root / "annotations"), "--videos", str(root / "videos"),
            "--splits", str(root / "splits.csv"), "--out", str(out), "--model", "mvit_v2_tiny",
            "--clip-frames", "8", "--clip-size", "32", "--clip-fps", "4", "--clips-per-segment", "1",
            "--batch-size", "6", "--lr", "2e-3", *extra]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_two_torchrun_processes_equal_one_process_with_the_same_shards(surgeries, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "ophora", *args(surgeries, tmp_path / "two", "--epochs", "3", "--workers", "0")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("phase top-1") == 1  # rank 0 speaks for both
    assert main(args(surgeries, tmp_path / "one", "--epochs", "3", "--workers", "0", "--batch-shards", "2")) == 0
    two, one = results(tmp_path / "two"), results(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "downstream.json").read_text())["world_size"] == 2
    assert two["settings"] == one["settings"] and two["settings"]["batch_shards"] == 2
    assert two["splits"] == one["splits"] and two["splits"]["train"]["clips"] == 16
    a, b = two["runs"]["real"], one["runs"]["real"]
    assert [h["epoch"] for h in a["history"]] == [1, 2, 3] and a["selected_epoch"] == b["selected_epoch"]
    np.testing.assert_allclose([h["train_loss"] for h in a["history"]], [h["train_loss"] for h in b["history"]],
                               rtol=1e-5)
    assert [h["val_top1"] for h in a["history"]] == [h["val_top1"] for h in b["history"]]
    assert a["test"]["clip"]["confusion"] == b["test"]["clip"]["confusion"]
    assert a["test"]["segment"]["top1"] == pytest.approx(b["test"]["segment"]["top1"])
    wa = load_file(tmp_path / "two" / "runs" / "real" / "best.safetensors")
    wb = load_file(tmp_path / "one" / "runs" / "real" / "best.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)  # Adam magnifies float-level noise
    # the shards are what fixes the result: the same 12-clip global batch in one shard trains differently
    assert main(args(surgeries, tmp_path / "whole", "--epochs", "3", "--workers", "0", "--batch-size", "12")) == 0
    c = results(tmp_path / "whole")["runs"]["real"]
    assert [h["train_loss"] for h in c["history"]] != pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_mid_epoch_saves_there_and_the_rerun_ends_exactly_as_the_whole_run(signum, surgeries, tmp_path,
                                                                                      monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc, tag = launch(args(surgeries, run, "--epochs", "5"))  # default workers: clips cut by a pool
    state = run / "runs" / "real" / "checkpoint" / "state.json"
    wait_for(state.is_file, 180, proc)  # the first epoch is done; the next step is mid-epoch
    ctrl_c(proc) if signum == signal.SIGINT else proc.send_signal(signum)
    code, err = finish(proc, 60)
    line = last_line(err)
    saved = json.loads(state.read_text())
    assert code == 128 + signum, err[-2000:]
    assert line.startswith(f"ophora downstream: stopped by {signal.Signals(signum).name}; real saved at epoch "
                           f"{saved['epoch'] + 1}, batch {saved['batch']}")
    assert line.endswith("rerun the same command to resume")
    assert 1 <= saved["batch"] and saved["epoch"] < 5 and len(saved["losses"]) == saved["batch"]
    assert not (run / "results.json").exists()
    no_survivors(tag)  # the clip-cutting pool and the loader workers died with it
    assert main(args(surgeries, run, "--epochs", "5")) == 0  # resumes from that batch
    assert main(args(surgeries, tmp_path / "whole", "--epochs", "5", "--workers", "0")) == 0
    assert results(run)["runs"] == results(tmp_path / "whole")["runs"]
    assert (run / "refused.csv").read_text() == (tmp_path / "whole" / "refused.csv").read_text()
    a = load_file(run / "runs" / "real" / "best.safetensors")
    b = load_file(tmp_path / "whole" / "runs" / "real" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("moment", ["cutting clips", "training"])
def test_no_worker_outlives_a_killed_downstream(moment, surgeries, tmp_path, monkeypatch):
    from test_interrupts import tagged

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    proc, tag = launch(args(surgeries, run, "--epochs", "50", "--workers", "2"))
    state = run / "runs" / "real" / "checkpoint" / "state.json"
    ready = (lambda: len(tagged(tag)) >= 3) if moment == "cutting clips" else \
        (lambda: state.is_file() and len(tagged(tag)) >= 3)  # the command and two workers (cutting or loading)
    wait_for(ready, 180, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    no_survivors(tag)


# ------------------------------------------------------------------------------------------------ shard arithmetic


def test_shards_cover_every_clip_once_and_ranks_take_turns():
    order = list(range(16))
    steps = [step_shards(order, k, 2, 6) for k in range(2)]
    assert steps == [[list(range(0, 6)), list(range(6, 12))], [list(range(12, 16)), []]]
    assert list(own_shards(4, Ranks(1, 2, 1))) == [1, 3] and list(own_shards(2, Ranks(0, 1, 0))) == [0, 1]
    rows = torch.arange(10.0).view(5, 2)
    assert torch.equal(gather_rows(rows, 5, Ranks(0, 1, 0)), rows)


def test_batchnorm_statistics_are_the_mean_of_the_shards_updates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4)).train()
    shards = [torch.randn(3, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4) * 3 + 1]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = []
    for x in shards:  # each shard's update from the same starting statistics
        model.load_state_dict(start)
        model(x)
        expected.append({k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(start)
    norms = NormStatistics(model)
    norms.start_step()
    for x in shards:
        norms.start_shard()
        model(x)
        norms.end_shard()
    norms.end_step(2)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, (expected[0]["1.running_mean"] + expected[1]["1.running_mean"]) / 2)
    torch.testing.assert_close(bn.running_var, (expected[0]["1.running_var"] + expected[1]["1.running_var"]) / 2)
    assert int(bn.num_batches_tracked) == 1


def test_workers_default_to_the_cores_at_most_four(tmp_path):
    config = DownstreamConfig(annotations=[tmp_path], videos=tmp_path, out=tmp_path / "o")
    assert config.worker_count() == min(4, len(os.sched_getaffinity(0)))
    config.workers = 0
    assert config.worker_count() == 0
