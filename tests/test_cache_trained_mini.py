"""benchmarks/cache_trained_mini.py runs on the shipped trained mini model and reports what it says it does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cache_trained_mini.py"


def test_cache_study_on_the_trained_mini_model_counts_compute_and_error(tmp_path):
    out = tmp_path / "study.json"
    subprocess.run([sys.executable, str(SCRIPT), "--prompts", "1", "--steps", "8", "--modes", "exact,fixed",
                    "--out", str(out)], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads(out.read_text())
    modes = {m["name"]: m for m in res["modes"]}
    assert res["prompts"] == 1 and res["steps"] == 8 and list(modes) == ["exact", "fixed"]
    assert modes["exact"]["attention_share"] == 1.0 and modes["exact"]["latent_rel_l2"] == 0.0
    assert modes["exact"]["psnr_db"] is None  # identical to itself
    # fixed at 8 steps: steps 0-4 (warm-up), 5 (every 3rd after it) and 7 (the last) run the blocks: 7 of 8
    assert modes["fixed"]["attention_share"] == 7 / 8 and modes["fixed"]["latent_rel_l2"] > 0
    assert all(0.0 <= m["phase_accuracy"] <= 1.0 for m in modes.values())
