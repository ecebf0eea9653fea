"""`ophora demo`: the shipped mini model follows the twelve phases' instructions; the whole path on the tiny model
runs end to end; a rerun remakes nothing."""

from __future__ import annotations

import csv

import numpy as np
from safetensors.torch import load_file
from scipy.stats import binom

from ophora import cli
from ophora.core.media import read_video
from ophora.core.tables import slug
from ophora.synthetic.phase_videos import colour_phase_classifier
from ophora.synthetic.surgery_world import CATARACT1K_PHASES


def test_demo_shows_the_instructed_phases_runs_the_whole_path_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "10", "--frames", "9"]  # the model's 17 frames and 20 steps: 2x longer
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out / "phases" / "index.html")

    # the shipped model: each of the twelve videos shows the phase its instruction names, far above chance
    shown = list(csv.DictReader((out / "phases" / "manifest.csv").open()))
    assert len(shown) == 12
    classify, right = colour_phase_classifier(), 0
    for row in shown:
        frames, fps = read_video(out / "phases" / row["path"])
        assert frames.shape == (9, 128, 192, 3) and fps == 8
        right += slug(classify(frames)) == row["clip id"].rsplit("_", 1)[0]
    assert binom.sf(right - 1, 12, 1 / 12) < 0.01, f"{right} of 12 phases recognised"  # P(>= right | chance)

    kept = list(csv.DictReader((out / "dataset" / "privacy_preserved.csv").open()))
    made = list(csv.DictReader((out / "samples" / "manifest.csv").open()))
    assert kept and [r["clip id"] for r in made] == sorted(r["clip id"] for r in kept)
    assert {r["prompt"] for r in made} == {r["instruction"] for r in kept}
    frames, fps = read_video(out / "samples" / made[0]["path"])
    assert frames.shape == (9, 64, 96, 3) and fps == 8

    # both training stages changed the weights: base -> TPT -> P2FT
    weights = [load_file(p / "transformer" / "diffusion_pytorch_model.safetensors")
               for p in (out / "tiny-model", out / "tpt" / "final", out / "p2ft" / "final")]
    key = "transformer_blocks.0.attn1.to_q.weight"
    assert not np.allclose(weights[0][key], weights[1][key]) and not np.allclose(weights[1][key], weights[2][key])

    # a rerun finds everything done and remakes nothing
    made_at = [(out / folder / row["path"]).stat().st_mtime_ns for folder, row in (("samples", made[0]), ("phases", shown[0]))]
    assert cli.main(argv) == 0
    assert [(out / folder / row["path"]).stat().st_mtime_ns
            for folder, row in (("samples", made[0]), ("phases", shown[0]))] == made_at
