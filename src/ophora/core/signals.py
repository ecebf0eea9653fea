"""Stopping on SIGINT/SIGTERM: the first one asks the running loop to stop, the second stops at once.

A long loop runs inside `stop_requests(what)`: the first SIGINT or SIGTERM sets the flag it yields, the loop
finishes the item in hand (a training step, one clip), saves what it has and raises `Interrupted`; a loop whose
items take minutes (a source video, a generated video) passes `at_once=True` and abandons the item in hand
instead (its files are written atomically, so nothing is half-written). Any further signal raises
`Interrupted` at once. The CLI (`cli.main`, inside `exit_on_signals`) turns `Interrupted` into one line and
exit code 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.

Worker processes call `die_with_parent` first: they ignore SIGINT/SIGTERM (a Ctrl-C reaches the terminal's
whole process group; the parent decides when workers stop) and are killed by the kernel when their parent
dies, however it dies (SIGKILL included; Linux `prctl(PR_SET_PDEATHSIG)`). Processes a library starts (a local
Ray) start inside `starting_helpers`, and `core/reaper.py` ends them with this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
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


_last_signal = signal.SIGINT  # the last signal one of the handlers here got


def _received(signum: int) -> None:
    global _last_signal
    _last_signal = signum


def _raise(signum: int, frame) -> None:
    _received(signum)
    raise Interrupted(signum)


def as_interrupted(exc: KeyboardInterrupt) -> Interrupted:
    """`exc` as an `Interrupted`: a bare KeyboardInterrupt (Ray's blocking calls turn the `Interrupted` a handler here
    raised into one) becomes one by the last signal these handlers got."""
    return exc if isinstance(exc, Interrupted) else Interrupted(_last_signal)


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
        _received(signum)
        if at_once or flag.requested:
            raise Interrupted(signum)
        flag.signum = signum
        log.warning("%s: stopping after the current %s (send it again to stop at once)",
                    signal.Signals(signum).name, what)

    with _handlers(handler):
        yield flag


@contextlib.contextmanager
def starting_helpers() -> Iterator[None]:
    """Around a library call that starts long-lived helper processes and must not be cut short (`ray.init`).

    SIGINT/SIGTERM are held during the block and re-sent to this process after it (to the handlers in place
    before it: handlers the call installs are undone); the helpers start with SIGINT blocked, so the terminal's
    Ctrl-C (sent to the whole process group) leaves them to this process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGINT the mask held is delivered now
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the block (main thread): they arrive when it ends. Processes forked inside it
    start with them blocked, so none can stop a worker before its `die_with_parent` ignores them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def kill_workers() -> None:
    """Kill this process's multiprocessing workers, when it exits: they ignore the SIGTERM with which the interpreter's
    exit stops them and would be waited for forever (a loader whose iterator an interruption left behind)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's loader would raise on its workers' deaths
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


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
