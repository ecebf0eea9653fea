"""Load on `ophora review serve`: N concurrent simulated raters answering for a bounded time on localhost.

Makes a study of tiny videos with N raters, starts the real server in its own process on 127.0.0.1, and
runs N threads, each signed in as one rater with its own HTTP connection, posting scores (cycling over its
videos and criteria, changing its answers) as fast as the server answers, until the time or the request cap
is reached. Every 10th request is sent a second time with the same request id (a retry or a replay): it
must be refused (409) and store nothing. Afterwards the database must hold exactly one event per accepted
request and, for every (rater, video, criterion), the score of that rater's last accepted request.

    python benchmarks/review_load.py [--raters 20] [--seconds 20] [--json benchmarks/results/review_load.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def _start(study: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ophora", "review", "serve", str(study), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=None,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start in 30 s")


def _rater(url: str, token: str, stop_at: float, cap: int, result: dict) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/api/session", json={"token": token}).status_code == 200
        state = client.get("/api/state").json()
        headers = {"x-ophora-csrf": state["csrf"]}
        pairs = [(i["video"], c["key"]) for i in state["items"] for c in state["criteria"]]
        latencies, last, accepted, resends, resend_ok, errors = [], {}, 0, 0, 0, []
        n = 0
        while time.monotonic() < stop_at and n < cap:
            video, key = pairs[n % len(pairs)]
            body = {"request": secrets.token_hex(16), "video": video, "criterion": key, "score": 1 + (n * 7 + 3) % 5}
            start = time.perf_counter()
            r = client.post("/api/score", json=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            if r.status_code == 200:
                accepted += 1
                last[video, key] = body["score"]
            else:
                errors.append(r.status_code)
            if n % 10 == 9:  # the same request again: refused, nothing stored
                resends += 1
                resend_ok += client.post("/api/score", json=body, headers=headers).status_code == 409
            n += 1
        result.update(name=state["rater"], latencies=latencies, last=last, accepted=accepted, resends=resends,
                      resend_refused=resend_ok, errors=errors)


def run(raters: int = 20, seconds: float = 20.0, cap: int = 5000, folder: Path | None = None) -> dict:
    """Run the load and check the database; returns the report (see the module docstring)."""
    from review_helpers import make_samples

    from ophora.review.config import AddRaterConfig, CreateConfig
    from ophora.review.study import add_rater, create_study

    folder = Path(folder or tempfile.mkdtemp(prefix="review-load-"))
    study = folder / "study"
    create_study(CreateConfig(study=study, generated=make_samples(folder / "samples", per_phase=2, size=32), seed=0))
    tokens = [add_rater(AddRaterConfig(study=study, name=f"rater{i:02d}")).token for i in range(raters)]
    proc, url = _start(study)
    results = [{} for _ in tokens]
    try:
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=_rater, args=(url, t, stop_at, cap, r)) for t, r in zip(tokens, results)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 60)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if any(not r for r in results):
        raise RuntimeError("a simulated rater failed before finishing (see its traceback above)")

    db = sqlite3.connect(study / "study.sqlite")
    names = dict(db.execute("SELECT name, id FROM raters"))
    events = dict(db.execute("SELECT rater, COUNT(*) FROM events GROUP BY rater").fetchall())
    stored = {(rater, video, key): score for rater, video, key, score in db.execute(
        "SELECT rater, video, criterion, score FROM scores")}
    db.close()
    expected = {(names[r["name"]], video, key): score for r in results for (video, key), score in r["last"].items()}
    latencies = sorted(x for r in results for x in r["latencies"])
    accepted = sum(r["accepted"] for r in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "raters": raters, "seconds": round(elapsed, 2), "answers": accepted,
        "answers_per_s": round(accepted / elapsed, 1),
        "latency_ms": {"p50": round(pct(0.50), 2), "p90": round(pct(0.90), 2), "p99": round(pct(0.99), 2),
                       "max": round(latencies[-1] * 1000, 2)},
        "resends": sum(r["resends"] for r in results), "resends_refused": sum(r["resend_refused"] for r in results),
        "errors": sum(len(r["errors"]) for r in results),
        "exactly_once": {
            "events_equal_accepted": all(events.get(names[r["name"]], 0) == r["accepted"] for r in results),
            "scores_equal_last_accepted": stored == expected,
            "score_rows": len(stored), "distinct_answers": len(expected),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "server and clients share the machine; storage: SQLite WAL, synchronous=FULL, one commit per answer",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "review_load.json")
    args = parser.parse_args()
    report = run(args.raters, args.seconds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
