"""Stopping on SIGINT/SIGTERM: the first one asks the running loop to stop, the second stops at once.

A long loop runs inside `stop_requests(what)`: the first SIGINT or SIGTERM sets the flag it yields, the loop
finishes the item in hand (a training step, one clip), saves what it has and raises `Interrupted`; a loop whose
items take minutes (a source video, a generated video) passes `at_once=True` and abandons the item in hand
instead (its files are written atomically, so nothing is half-written). Any further signal raises
`Interrupted` at once. The CLI (`cli.main`, inside `exit_on_signals`) turns `Interrupted` into one line and
exit code 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.

Worker processes call `die_with_parent` first: they ignore SIGINT/SIGTERM (a Ctrl-C reaches the terminal's
whole process group; the parent decides when workers stop) and are killed by the kernel when their parent
dies, however it dies (SIGKILL included; Linux `prctl(PR_SET_PDEATHSIG)`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; `detail` says what was saved (for the CLI's one line)."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(detail)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def with_detail(self, detail: str) -> Interrupted:
        """The same interruption, saying what was saved."""
        return Interrupted(self.signum, detail)

    def message(self) -> str:
        said = f"; {self.detail}" if self.detail else ""
        return f"stopped by {signal.Signals(self.signum).name}{said}; rerun the same command to resume"


@dataclass
class StopFlag:
    """Set by the first SIGINT/SIGTERM inside `stop_requests`: the signal number, 0 while none came."""

    signum: int = 0

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def check(self, detail: str = "") -> None:
        """Raise `Interrupted` (saying `detail`) if a stop was requested."""
        if self.signum:
            raise Interrupted(self.signum, detail)


@contextlib.contextmanager
def _handlers(handler) -> Iterator[None]:
    """Install `handler` for SIGINT and SIGTERM for the block (main thread only), then restore the previous."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _raise(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread (the CLI's default for a whole command)."""
    with _handlers(_raise):
        yield


def ignore_signals() -> None:
    """Ignore SIGINT/SIGTERM for the rest of the process (while it exits after an interruption)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the block (while the CLI prints its last line)."""
    with _handlers(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def stop_requests(what: str, at_once: bool = False) -> Iterator[StopFlag]:
    """A flag the first SIGINT/SIGTERM sets (the loop stops after the current `what`); the next raises at once.

    With `at_once`, the first signal already raises `Interrupted` (the item in hand is abandoned).
    """
    flag = StopFlag()

    def handler(signum: int, frame) -> None:
        if at_once or flag.requested:
            raise Interrupted(signum)
        flag.signum = signum
        log.warning("%s: stopping after the current %s (send it again to stop at once)",
                    signal.Signals(signum).name, what)

    with _handlers(handler):
        yield flag


def die_with_parent(parent: int) -> None:
    """In a worker process: ignore SIGINT/SIGTERM and be killed by the kernel when `parent` (its pid) dies."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("cannot arm the parent-death signal: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
