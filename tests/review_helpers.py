"""Shared by the review tests: tiny sample and real-video folders, a study, and the real server in a process."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ophora.core.media import write_video

PHASES = ("capsulorhexis", "phacoemulsification", "incision")


def _frames(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """A cartoon eye under the microscope (sclera, iris, pupil) with an instrument sweeping across it."""
    import cv2

    rng = np.random.default_rng(seed)
    iris = tuple(int(c) for c in rng.integers(60, 160, 3))
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), (150, 40, 35), np.uint8)
        c, r = (w // 2, h // 2), min(h, w) // 2 - 2
        cv2.circle(img, c, r, (235, 225, 215), -1, cv2.LINE_AA)
        cv2.circle(img, c, int(r * 0.62), iris, -1, cv2.LINE_AA)
        cv2.circle(img, c, int(r * 0.3), (20, 15, 15), -1, cv2.LINE_AA)
        tip = (int(w * (0.25 + 0.5 * i / max(n - 1, 1))), int(h * 0.45))
        cv2.line(img, (w - 1, h - 1), tip, (200, 200, 210), max(1, w // 40), cv2.LINE_AA)
        frames.append(img)
    return np.stack(frames)


def make_samples(folder: Path, per_phase: int = 2, frames: int = 9, size: int = 64) -> Path:
    """A folder like 'ophora sample' writes: <clip id>/<n>.mp4 and manifest.csv."""
    rows = []
    for p, phase in enumerate(PHASES):
        for i in range(1, per_phase + 1):
            clip = f"{phase}_{i}"
            path = folder / clip / "0.mp4"
            write_video(path, _frames(100 * p + i, frames, size, size), fps=8)
            rows.append([clip, 0, f"Perform {phase} step {i}.", 42, "tiny", 2, 6.0, frames, 8, f"{size}x{size}",
                         0.1, f"{clip}/0.mp4"])
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip id", "n", "prompt", "seed", "model", "steps", "guidance", "frames", "fps", "size", "seconds", "path"])
        w.writerows(rows)
    return folder


def make_real(folder: Path, count: int = 2) -> Path:
    """An Ophora-160K-like folder (clips/<clip id>.mp4 + instructions.csv) at another size and frame rate."""
    lines = ["clip id,instruction"]
    for i in range(count):
        clip = f"{PHASES[i % len(PHASES)]}_{90 + i}"
        write_video(folder / "clips" / f"{clip}.mp4", _frames(900 + i, 30, 72, 96), fps=24)
        lines.append(f"{clip},Perform {PHASES[i % len(PHASES)]} step {90 + i}.")
    (folder / "instructions.csv").write_text("\n".join(lines) + "\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ophora review serve` in its own process, on a free localhost port."""

    def __init__(self, study: Path, port: int | None = None):
        self.study, self.port = study, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.output = ""  # what the server printed (stdout and stderr) until it was last stopped

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ophora", "review", "serve", str(self.study),
                                      "--port", str(self.port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        raise RuntimeError("server did not start in 30 s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.output += self.proc.stdout.read()
        self.proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
