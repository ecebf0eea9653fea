"""`ophora curate --engine ray` on the local Ray it starts: a Ctrl-C stops it within seconds with one line and exit
130, and after a `kill -9` of curate no process of that Ray (raylet, GCS, dashboard and its agents, workers)
outlives a short grace period."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from test_interrupts import ctrl_c, finish, last_line, launch, wait_for

pytest.importorskip("ray", reason="the Ray engine needs the extra ophora[ray]")

GRACE_S = 5.0


@pytest.fixture(scope="module")
def narrated(narrated_videos, tmp_path_factory) -> Path:
    """The first three synthetic narrated videos (each takes a worker several seconds)."""
    from ophora.synthetic.narrated_videos import narrated_plan

    out = tmp_path_factory.mktemp("narrated")
    for video in narrated_plan()[:3]:
        for path in narrated_videos.glob(f"{video.stem}.*"):
            shutil.copy(path, out)
    return out


def run_processes(pid: int, tag: str) -> dict[int, str]:
    """Live processes of the run `pid` started in a session of its own: that session's members, and any process
    carrying its tag in the environment (Ray renames its processes over their environment, so neither alone is
    enough); pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z" and (int(stat[3]) == pid or f"OPHORA_TEST_TAG={tag}".encode() in environ):
            found[int(entry.name)] = command
    return found


def ray_working(pid: int, tag: str) -> bool:
    """The local Ray is up and a worker runs a source."""
    return any(c.startswith("ray::process_source") for c in run_processes(pid, tag).values())


def assert_none_left(pid: int, tag: str) -> None:
    deadline = time.monotonic() + GRACE_S
    while run_processes(pid, tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = run_processes(pid, tag)
    for other in left:
        with contextlib.suppress(OSError):
            os.kill(other, signal.SIGKILL)
    assert not left, f"processes of the run alive {GRACE_S} s after it ended: {left}"


def start(narrated: Path, out: Path):
    proc, tag = launch(["curate", str(narrated), "--out", str(out), "--engine", "ray"])
    wait_for(lambda: ray_working(proc.pid, tag), 120, proc)
    return proc, tag


@pytest.mark.slow  # about a minute on 2 cores; CI keeps the other Ray test (OPHORA_SLOW=1 runs it)
def test_ctrl_c_stops_ray_curation_within_seconds_with_one_line(narrated, tmp_path):
    proc, tag = start(narrated, tmp_path / "out")
    sent = time.monotonic()
    ctrl_c(proc)  # the whole process group, as a terminal does
    code, err = finish(proc, 30)
    took = time.monotonic() - sent
    line = last_line(err)
    assert code == 130 and line.startswith("ophora curate: stopped by SIGINT;") and "source videos done" in line, err
    assert took < 10, f"took {took:.1f} s to stop"
    assert_none_left(proc.pid, tag)


def test_no_ray_process_outlives_a_killed_curate(narrated, tmp_path):
    proc, tag = start(narrated, tmp_path / "out")
    assert len(run_processes(proc.pid, tag)) >= 6  # curate, its watcher, GCS, raylet, agents, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert_none_left(proc.pid, tag)
