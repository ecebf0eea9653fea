"""Local worker pools that leave signals to their parent and die with it (core/signals.py's worker contract)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

from ophora.core.signals import die_with_parent, signals_ignored


def start_pool(workers: int, task: Callable, calls: list[tuple]) -> tuple[ProcessPoolExecutor, list[Future]]:
    """`task(*call)` for every call in `workers` spawned processes, which ignore SIGINT/SIGTERM and are killed by the
    kernel when this process dies; returns the pool and the calls' futures, in order."""
    with signals_ignored():  # the workers (spawned as tasks arrive) and the resource tracker start with them ignored
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        return pool, [pool.submit(task, *call) for call in calls]


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the tasks not started and kill the workers (ProcessPoolExecutor has no public way before 3.14)."""
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(5)
