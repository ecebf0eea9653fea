"""benchmarks/mini_ophora.py: step-level resume, the time budget, state packing, the experiment's data plumbing
(fast), and the whole toy chain end to end on the CPU (slow: OPHORA_SLOW=1)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ophora.synthetic import mini_experiment as mx

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mini_ophora.py"


@pytest.fixture(scope="module")
def mini():
    spec = importlib.util.spec_from_file_location("mini_ophora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mini_ophora"] = module
    spec.loader.exec_module(module)
    return module


def test_steps_run_once_and_a_rerun_continues_after_the_failed_step(mini, tmp_path):
    calls = []

    def step(name, fail=False):
        def fn():
            calls.append(name)
            if fail:
                raise RuntimeError(name)
            return {"value": name}
        return fn

    steps = mini.Steps(tmp_path)
    steps.run("a", step("a"))
    with pytest.raises(RuntimeError):
        steps.run("b", step("b", fail=True))
    record = json.loads((tmp_path / mini.STEPS_FILE).read_text())
    assert list(record) == ["a"] and record["a"]["value"] == "a" and record["a"]["seconds"] >= 0

    again = mini.Steps(tmp_path)  # a new process: a is skipped, b runs now
    assert again.run("a", step("a")) == record["a"]
    again.run("b", step("b"))
    assert calls == ["a", "b", "b"] and again.ran == ["b"]
    assert list(json.loads((tmp_path / mini.STEPS_FILE).read_text())) == ["a", "b"]


def test_the_time_budget_stops_before_the_next_step(mini, tmp_path):
    steps = mini.Steps(tmp_path, max_seconds=0.0)
    with pytest.raises(mini.Stopped, match="a"):
        steps.run("a", dict)
    assert not (tmp_path / mini.STEPS_FILE).exists()


def test_an_out_folder_of_other_settings_is_refused(mini, tmp_path):
    mini.claim(tmp_path, {"profile": "toy", "frames": 9, "seconds": (2.5, 3.0)})
    mini.claim(tmp_path, {"profile": "toy", "frames": 9, "seconds": (2.5, 3.0)})  # the same: accepted
    with pytest.raises(SystemExit, match="frames"):
        mini.claim(tmp_path, {"profile": "toy", "frames": 17, "seconds": (2.5, 3.0)})


def test_pack_and_unpack_keep_what_later_steps_need(mini, tmp_path, monkeypatch):
    out = tmp_path / "out"
    files = {"model/vae/w.safetensors": b"m", "tpt/final/t.safetensors": b"t", "tpt/checkpoints/step-1/x": b"c",
             "p2ft/final/p.safetensors": b"p" * 5000, "dataset/clips/c_1.mp4": b"v", "cache/index.csv": b"i",
             "phases/tpt/run/clips/v.safetensors": b"d", "phases/tpt/run/results.json": b"{}",
             "dataset/.x.partial1-2.csv": b"tmp"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "phases/tpt/inputs/videos").mkdir(parents=True)
    (out / "phases/tpt/inputs/videos/c_1.mp4").symlink_to("../../../../dataset/clips/c_1.mp4")
    (out / mini.STEPS_FILE).write_text(json.dumps({"world": {}, "tpt": {}}))  # tpt done: model/ is no longer read
    monkeypatch.setattr(mini, "PART_BYTES", 4096)
    parts = mini.pack(out, tmp_path / "state")
    assert len(parts) >= 2 and all(p.stat().st_size <= 4096 for p in parts)

    restored = tmp_path / "restored"
    assert mini.unpack(tmp_path / "state", restored)
    kept = {p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file()}
    assert kept == {"tpt/final/t.safetensors", "p2ft/final/p.safetensors", "dataset/clips/c_1.mp4",
                    "cache/index.csv", "phases/tpt/run/results.json", "phases/tpt/inputs/videos/c_1.mp4",
                    mini.STEPS_FILE}
    assert (restored / "p2ft/final/p.safetensors").read_bytes() == b"p" * 5000
    assert (restored / "phases/tpt/inputs/videos/c_1.mp4").is_symlink()
    assert (restored / "phases/tpt/inputs/videos/c_1.mp4").read_bytes() == b"v"
    assert not mini.unpack(tmp_path / "state", restored)  # an OUT with steps is never overwritten


def _truth(videos: dict[str, list[str]]) -> dict:
    return {"videos": {v: {"phases": [{"phase": p, "start": 4.0 * k, "end": 4.0 * k + 3, "overlay": ""}
                                      for k, p in enumerate(ps)]} for v, ps in videos.items()}}


def test_held_out_videos_cover_the_phases_and_prompts_are_their_instructions():
    truth = _truth({"case_1": ["Incision", "Viscoelastic"], "case_2": ["Incision"], "case_3": ["Capsulorhexis"],
                    "case_4": ["Viscoelastic", "Capsulorhexis", "Hydrodissection"]})
    assert mx.choose_holdout(truth, 2) == ["case_1", "case_4"]  # every phase but none twice over
    labels = {"case_1_0": {"video": "case_1", "phase": "Incision", "instruction": "Cut the wound."},
              "case_2_0": {"video": "case_2", "phase": "Incision", "instruction": "Make the incision."},
              "case_3_0": {"video": "case_3", "phase": "Capsulorhexis", "instruction": "Tear the capsule."},
              "case_4_0": {"video": "case_4", "phase": "Viscoelastic", "instruction": "Fill the chamber."},
              "case_4_1": {"video": "case_4", "phase": "Viscoelastic", "instruction": "Inject the OVD."}}
    phases = ["Incision", "Viscoelastic", "Capsulorhexis", "Hydrodissection"]
    rows = mx.phase_prompts(labels, {"case_1", "case_4"}, 3, phases)
    assert [(r["clip id"], r["instruction"], r["source"]) for r in rows] == [
        ("incision_1", "Cut the wound.", "held-out"), ("incision_2", "Cut the wound.", "held-out"),
        ("incision_3", "Cut the wound.", "held-out"),
        ("viscoelastic_1", "Fill the chamber.", "held-out"), ("viscoelastic_2", "Inject the OVD.", "held-out"),
        ("viscoelastic_3", "Fill the chamber.", "held-out"),
        ("capsulorhexis_1", "Tear the capsule.", "training"), ("capsulorhexis_2", "Tear the capsule.", "training"),
        ("capsulorhexis_3", "Tear the capsule.", "training")]  # no clip of Hydrodissection: no prompt
    limited = mx.phase_prompts(labels, {"case_1", "case_4"}, 1, phases, most=2)
    assert [r["phase"] for r in limited] == ["Incision", "Viscoelastic"]  # phases with held-out clips first


@pytest.mark.slow
def test_the_toy_experiment_runs_end_to_end_and_a_rerun_skips_every_step(mini, tmp_path):
    out = tmp_path / "mini"
    argv = ["--toy", "--out", str(out), "--device", "cpu", "--workers", "2"]
    assert mini.main(argv) == 0
    results = json.loads((out / "results" / "mini_ophora.json").read_text())
    for key in ("tpt", "p2ft"):
        assert 0 <= results["leakage_rate"][key] <= 1 and 0 <= results["phase_accuracy"][key] <= 1
        assert results["fvd"][key] >= 0
    assert set(results["downstream_top1"]) == {"real", "real_plus_generated"}
    prompts = mx.read_rows(out / "splits" / "prompts.csv")
    phases = {r["phase"] for r in prompts}
    assert len(phases) == results["samples"]["phases"] == mini.TOY.phases
    assert results["samples"]["tpt"] == results["samples"]["p2ft"] == len(prompts) == mini.TOY.per_phase * len(phases)
    assert results["device"].startswith("cpu") and "--toy" in results["command"]
    assert set(results["seconds"]) >= {"world", "curate", "model", "prepare", "tpt", "p2ft", "sample_tpt",
                                       "sample_p2ft", "evaluate_tpt", "evaluate_p2ft", "phases_tpt", "phases_p2ft",
                                       "downstream"}

    # the same prompts and seeds for both models; each generated video decodes at the trained size
    manifests = [mx.read_rows(out / "samples" / m / "manifest.csv") for m in ("tpt", "p2ft")]
    assert [r["clip id"] for r in manifests[0]] == [r["clip id"] for r in manifests[1]] == [r["clip id"] for r in prompts]
    from ophora.core.media import read_video

    frames, fps = read_video(out / "samples" / "p2ft" / manifests[1][0]["path"])
    assert frames.shape == (mini.TOY.frames, mini.TOY.height, mini.TOY.width, 3) and fps == 8

    # the VAE was trained and its scaling factor gives the cached latents about unit variance
    from safetensors.torch import load_file

    scale = json.loads((out / "model" / "vae" / "config.json").read_text())["scaling_factor"]
    cached = [load_file(p)["latent_mean"] for p in sorted((out / "cache" / "clips").glob("*.safetensors"))]
    assert 0.5 < float(np.std(np.concatenate([c.numpy().ravel() for c in cached]))) * scale < 2.0
    assert results["vae"]["steps"] == mini.TOY.vae_steps
    # P2FT trained only on privacy-preserved training clips
    assert results["training"]["p2ft"]["steps"] == mini.TOY.p2ft_steps

    grid = cv2.imread(str(out / "results" / "mini_ophora_frames.png"))
    assert grid is not None and grid.shape[0] > len(phases) * mini.TOY.height
    assert cv2.imread(str(out / "results" / "mini_ophora.png")) is not None

    before = (out / mini.STEPS_FILE).read_text()
    video = out / "samples" / "tpt" / manifests[0][0]["path"]
    mtime = video.stat().st_mtime_ns
    assert mini.main(argv) == 0  # every step is done: nothing runs again, the report is rewritten alike
    assert (out / mini.STEPS_FILE).read_text() == before and video.stat().st_mtime_ns == mtime
    assert json.loads((out / "results" / "mini_ophora.json").read_text())["leakage_rate"] == results["leakage_rate"]

    # the demo takes the P2FT model the run wrote, and samples the twelve phases at the size it was trained for
    from ophora import cli

    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--model", results["p2ft_model"], "--steps", "2",
                     "--no-pipeline"]) == 0
    made = mx.read_rows(tmp_path / "demo" / "phases" / "manifest.csv")
    assert len(made) == 12
    frames, _ = read_video(tmp_path / "demo" / "phases" / made[0]["path"])
    assert frames.shape == (mini.TOY.frames, mini.TOY.height, mini.TOY.width, 3)


def test_the_edge_term_costs_blurred_edges_and_not_a_brightness_offset():
    import torch

    from ophora.synthetic.mini_model import edge_loss

    x = torch.zeros(1, 3, 1, 16, 16)
    x[..., 4:12, 6:10] = 1.0  # a bright bar: a letter's stroke
    blurred = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    assert float(edge_loss(x, x)) == 0 and float(edge_loss(x + 0.3, x)) < 1e-6
    assert float(edge_loss(blurred, x)) > 0.01


def test_the_mini_model_has_a_trained_vae_with_unit_variance_latents(tmp_path):
    import torch
    from safetensors.torch import load_file

    from ophora.core.media import write_video
    from ophora.core.models import load_pipeline
    from ophora.synthetic.mini_model import _to_unit, frame_windows, make_mini_model
    from ophora.synthetic.random_pipeline import SIZES, random_pipeline, train_tokenizer

    t = np.arange(18)[:, None, None]
    x = np.arange(64)[None, None, :]
    frames = np.repeat(((np.sin((x + 3 * t) / 5) + 1) * 120).astype(np.uint8)[..., None], 3, -1)
    frames = np.broadcast_to(frames, (18, 48, 64, 3)).copy()
    clip = write_video(tmp_path / "clip.mp4", frames, 8.0)

    record = make_mini_model(tmp_path / "model", [clip], "tiny", 9, 48, 64, vae_steps=2, vae_batch=1, vae_edge_weight=1.0)
    assert record["vae"]["windows"] == 2 and record["vae"]["steps"] == 2 and "random" in record["text_encoder"]
    assert record["vae"]["edge_weight"] == 1.0
    pipe = load_pipeline(str(tmp_path / "model"))
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.num_layers == SIZES["tiny"]["transformer"]["num_layers"]

    # the saved VAE is trained (not the random initialisation of the same seed) ...
    train_tokenizer(tmp_path / "tok")
    untrained = random_pipeline("tiny", tmp_path / "tok", seed=0).vae.state_dict()
    trained = load_file(str(tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(trained[k], untrained[k]) for k in untrained)
    # ... and its scaling factor gives its posterior means unit standard deviation, recomputed here
    with torch.no_grad():
        means = pipe.vae.encode(_to_unit(frame_windows([clip], 9, 48, 64), torch.device("cpu"))).latent_dist.mode()
    assert abs(float(means.std()) * pipe.vae.config.scaling_factor - 1) < 1e-3
