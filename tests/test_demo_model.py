"""The shipped demo model: how it is exported (float16 copy, prompts, provenance) and that the shipped one is intact."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from ophora.core.errors import InputError
from ophora.demo import bundled
from ophora.synthetic.demo_model import PROMPTS_FILE, PROVENANCE_FILE, export_demo_model
from ophora.synthetic.phase_videos import CATARACT1K_PHASES
from ophora.synthetic.random_pipeline import make_random_model

WEIGHTS = ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


def test_export_halves_every_weight_and_adds_prompts_and_provenance(tmp_path):
    final = make_random_model(tmp_path / "final")
    dest = export_demo_model(final, tmp_path / "demo_model", {"run": "test"})
    for name in WEIGHTS:
        full, half = load_file(final / name), load_file(dest / name)
        assert full.keys() == half.keys()
        for key, tensor in full.items():
            assert half[key].dtype == (torch.float16 if tensor.is_floating_point() else tensor.dtype)
            assert (half[key].float() - tensor.float()).abs().max() <= 1e-3 * max(1.0, tensor.abs().max().item())
    assert (dest / "model_index.json").read_text() == (final / "model_index.json").read_text()
    rows = list(csv.DictReader((dest / PROMPTS_FILE).open()))
    assert [r["phase"] for r in rows] == list(CATARACT1K_PHASES) and all(r["instruction"] for r in rows)
    assert json.loads((dest / PROVENANCE_FILE).read_text())["run"] == "test"


def test_export_refuses_a_folder_that_is_no_pipeline(tmp_path):
    with pytest.raises(InputError, match="model_index.json"):
        export_demo_model(tmp_path, tmp_path / "demo_model", {})


def test_the_shipped_model_is_the_mini_runs_p2ft_in_float16():
    shipped = bundled("demo_model")
    provenance = json.loads((shipped / PROVENANCE_FILE).read_text())
    assert provenance["device"] == "NVIDIA H200" and provenance["phase_accuracy_of_its_videos"] > 0.5
    assert json.loads((shipped / "ophora_train.json").read_text())["video"] == {"frames": 17, "height": 128,
                                                                                "width": 192, "fps": 8.0}
    for name in WEIGHTS:
        assert {t.dtype for t in load_file(shipped / name).values() if t.is_floating_point()} == {torch.float16}
