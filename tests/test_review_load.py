"""20 concurrent simulated raters against the real server on localhost for a bounded time: every answer stored
exactly once, resent requests refused, latency bounded (benchmarks/review_load.py; its full run writes
benchmarks/results/review_load.json)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import review_load  # noqa: E402


def test_twenty_raters_every_answer_exactly_once(tmp_path):
    report = review_load.run(raters=20, seconds=6, cap=400, folder=tmp_path)
    assert report["answers"] > 100, report
    assert report["errors"] == 0, report
    assert report["resends"] > 0 and report["resends_refused"] == report["resends"], report
    assert report["exactly_once"]["events_equal_accepted"], report
    assert report["exactly_once"]["scores_equal_last_accepted"], report
    # one row per (rater, video, criterion) answered, however often it was changed (a busy machine lets some
    # raters answer fewer than their 42 pairs while the total passes 20 x 42, so the total says nothing here)
    assert report["exactly_once"]["score_rows"] == report["exactly_once"]["distinct_answers"], report
    assert report["latency_ms"]["p99"] < 3000, report
