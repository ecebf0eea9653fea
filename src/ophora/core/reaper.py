"""Ending the processes a block started, however this process ends: for helpers it cannot arm itself (a local Ray).

`die_with_parent` (core/signals.py) covers workers whose first code we write; a local Ray's daemons, agents and
workers are started by Ray and some of them outlive a killed driver for a minute or more. `reaped_children()`
starts a watcher (this file run as a script: standard library only) that records every process descending from
this one that appears while the block runs. When the block ends, or this process dies (SIGKILL included: the
watcher's pipe closes), the watcher SIGKILLs those that are still alive, with their own children and their
process groups, then exits. Processes that existed before the block are never touched; neither is a process
that was started and orphaned between two looks (every `POLL_S`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

POLL_S = 0.2
KILL_ROUNDS = 20  # killing may orphan grandchildren that a later round finds


def _processes() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent pid, process group, start time in clock ticks)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, int, int]], groups: bool = False) -> set[int]:
    """The live processes below `roots` (by parent pid; with `groups`, also those in a group one of them leads)."""
    found = {pid for pid, (_, group, _) in table.items() if groups and group in roots}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(roots | found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def watch(parent: int) -> None:
    """The watcher's loop: record `parent`'s new descendants until its pipe (stdin) closes, then kill them."""
    me = os.getpid()
    table = _processes()
    before = {(pid, start) for pid, (_, _, start) in table.items()}
    known: dict[int, int] = {}  # pid -> start time
    os.write(sys.stdout.fileno(), b"\n")  # ready: the parent may start processes now
    while True:
        for pid in _descendants({parent}, table) - {me}:
            if (pid, table[pid][2]) not in before:
                known[pid] = table[pid][2]
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if (readable and not os.read(sys.stdin.fileno(), 1)) or os.getppid() != parent:
            break
        table = _processes()
    for _ in range(KILL_ROUNDS):
        table = _processes()
        alive = {pid for pid, start in known.items() if pid in table and table[pid][2] == start}
        victims = (alive | _descendants(alive, table, groups=True)) - {me}
        if not victims:
            return
        for pid in victims:
            known[pid] = table[pid][2]
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def reaped_children() -> Iterator[None]:
    """Processes started inside the block (and all they start) are killed when it ends or this process dies."""
    from ophora.core.signals import signals_ignored  # (not at the top: this file also runs as a bare script)

    if not sys.platform.startswith("linux"):
        yield
        return
    with signals_ignored():  # the watcher ignores the terminal's Ctrl-C: it must outlive this process
        watcher = subprocess.Popen([sys.executable, "-I", __file__, str(os.getpid())], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
    try:
        watcher.stdout.read(1)
        yield
    finally:
        watcher.stdin.close()
        watcher.wait()
        watcher.stdout.close()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
