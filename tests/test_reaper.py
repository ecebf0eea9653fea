"""core/reaper.py and signals.starting_helpers: what a block starts ends with it, or with this process however it
dies; what existed before is left alone; signals during a helper's start are held, then delivered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ophora.core.reaper import reaped_children
from ophora.core.signals import starting_helpers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watcher reads /proc")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


# An orphan-maker: its child is killed at once, so the grandchild's parent becomes init (as Ray's agents do when the
# raylet dies) and only the watcher can still find it.
ORPHAN = "import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); print(p.pid, flush=True); time.sleep(300)"


def start_orphan_maker() -> tuple[subprocess.Popen, int]:
    maker = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True)
    return maker, int(maker.stdout.readline())


def test_a_killed_parent_takes_what_it_started_along_not_what_it_had_before(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        from ophora.core.reaper import reaped_children
        before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        with reaped_children():
            maker = subprocess.Popen([sys.executable, "-c", {ORPHAN!r}], stdout=subprocess.PIPE, text=True)
            grandchild = int(maker.stdout.readline())
            time.sleep(0.5)  # the watcher has seen them
            print(before.pid, maker.pid, grandchild, flush=True)
            time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    before, maker, grandchild = map(int, parent.stdout.readline().split())
    try:
        os.kill(maker, signal.SIGKILL)  # the grandchild is an orphan now
        time.sleep(0.3)
        assert alive(grandchild)
        parent.kill()
        parent.wait(5)
        assert gone_within([grandchild], 5), "an orphan of a process started in the block survived"
        assert alive(before), "a process started before the block was killed"
    finally:
        for pid in (before, maker, grandchild):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_leaving_the_block_ends_its_processes():
    outside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        with reaped_children():
            maker, grandchild = start_orphan_maker()
            time.sleep(0.5)
        assert gone_within([maker.pid, grandchild], 5)
        maker.wait(5)
        assert alive(outside.pid)
    finally:
        outside.kill()
        outside.wait()


def test_signals_during_a_helpers_start_are_held_then_delivered():
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with starting_helpers():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            assert got == []  # held
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            signal.signal(signal.SIGTERM, lambda signum, frame: got.append(-signum))  # a library's own (ray.init's)
        assert got == [signal.SIGTERM]  # delivered to the handler in place before the block
        blocked = int(next(line for line in Path(f"/proc/{helper.pid}/status").read_text().splitlines()
                           if line.startswith("SigBlk:")).split()[1], 16)
        assert blocked & (1 << (signal.SIGINT - 1)), "the helper would die of the terminal's Ctrl-C"
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGINT}  # unblocked here again
    finally:
        signal.signal(signal.SIGTERM, previous)
        helper.kill()
        helper.wait()
