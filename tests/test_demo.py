"""`ophora demo`: the whole path on the tiny model, end to end, and its rerun."""

from __future__ import annotations

import csv

import numpy as np
from safetensors.torch import load_file

from ophora import cli
from ophora.core.media import read_video


def test_demo_runs_the_whole_path_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "samples" / "index.html")

    kept = list(csv.DictReader((out / "dataset" / "privacy_preserved.csv").open()))
    made = list(csv.DictReader((out / "samples" / "manifest.csv").open()))
    assert kept and [r["clip id"] for r in made] == sorted(r["clip id"] for r in kept)
    assert {r["prompt"] for r in made} == {r["instruction"] for r in kept}
    frames, fps = read_video(out / "samples" / made[0]["path"])
    assert frames.shape == (9, 64, 96, 3) and fps == 8
    assert len(list(csv.DictReader((out / "phases" / "manifest.csv").open()))) == 12

    # both training stages changed the weights: base -> TPT -> P2FT
    weights = [load_file(p / "transformer" / "diffusion_pytorch_model.safetensors")
               for p in (out / "tiny-model", out / "tpt" / "final", out / "p2ft" / "final")]
    key = "transformer_blocks.0.attn1.to_q.weight"
    assert not np.allclose(weights[0][key], weights[1][key]) and not np.allclose(weights[1][key], weights[2][key])

    # a rerun finds everything done and remakes nothing
    before = (out / "samples" / made[0]["path"]).stat().st_mtime_ns
    assert cli.main(["demo", "--out", str(out)]) == 0
    assert (out / "samples" / made[0]["path"]).stat().st_mtime_ns == before
