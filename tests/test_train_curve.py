"""benchmarks/train_curve.py --tiny on the CPU: the real Cataract-1K frames, three runs, the JSON's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_DATA

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_curve.py"


@pytest.mark.skipif(not (REAL_DATA / "cataract1k_iol_sequence").is_dir(), reason="no real Cataract-1K frames here")
def test_tiny_curve_compares_the_fast_path_with_bf16_and_a_noise_reference(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=300)
    res = json.loads((tmp_path / "train_curve_tiny.json").read_text())
    assert res["complete"] and (tmp_path / "train_curve_tiny.png").stat().st_size > 0
    assert set(res["runs"]) == set(res["smoothed"]) == {"bf16", "fast", "reference"}
    steps = res["training"]["steps"]
    for name, run in res["runs"].items():
        assert len(run["losses"]) == len(res["smoothed"][name]) == steps
        assert all(loss > 0 for loss in run["losses"])
    assert res["runs"]["fast"]["selective_checkpointing"] and not res["runs"]["bf16"]["selective_checkpointing"]
    assert res["runs"]["fast"]["fp8_note"] == "no CUDA GPU"  # the CPU falls back to the exact bf16 path ...
    assert res["gap_fast_vs_bf16"]["max"] < 1e-5  # ... whose losses selective checkpointing does not change
    assert res["gap_reference_vs_bf16"]["max"] > 0  # another seed: other draws, another curve
    assert res["data"]["windows"] * res["data"]["frames"] == res["data"]["files"]
    assert res["within_noise"] is True and "equal within noise" in res["verdict"]
