"""What users expect: export of any checkpoint, sampling a checkpoint, the Generator API, step progress, the
training report, authors-compatible sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ophora import cli
from ophora.core.media import read_video, to_uint8, write_video
from ophora.sample import Generator
from ophora.train.config import load_config
from ophora.train.report import write_report
from ophora.train.trainer import train
from test_train import cache, dataset  # noqa: F401  (the shared module fixtures)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "ophora" / "configs"
VIDEO = dict(frames=9, height=32, width=32)
TRANSFORMER = Path("transformer") / "diffusion_pytorch_model.safetensors"


def run_training(tiny_model, cache, out: Path, *overrides: str) -> Path:
    return train(load_config(CONFIGS / "tiny-tpt.yaml", [f"model={tiny_model}", f"cache={cache}", f"out={out}",
                                                          "steps=4", "checkpoint_every=2", "keep_checkpoints=3",
                                                          *overrides]))


@pytest.fixture(scope="module")
def run(tiny_model, cache, tmp_path_factory) -> Path:
    """A full-model run of 4 steps with checkpoints at 2 and 4 and validation videos at steps 2 and 4."""
    return run_training(tiny_model, cache, tmp_path_factory.mktemp("run") / "run", "validate_every=2",
                        "validation_steps=1", "validation_frames=9", "validation_height=32", "validation_width=32",
                        "validation_prompts=[Incise the cornea.,Inject viscoelastic.]")


def tensors_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------------------------------- export


def test_export_of_the_last_checkpoint_equals_final_and_earlier_ones_differ(run, tmp_path):
    for step in (2, 4):
        assert cli.main(["export", str(run / "checkpoints" / f"step-{step:07d}"), str(tmp_path / f"e{step}")]) == 0
    assert tensors_equal(tmp_path / "e4" / TRANSFORMER, run / "final" / TRANSFORMER)
    assert not tensors_equal(tmp_path / "e2" / TRANSFORMER, tmp_path / "e4" / TRANSFORMER)
    record = json.loads((tmp_path / "e2" / "ophora_train.json").read_text())
    assert record["steps"] == 2 and record["video"] == json.loads((run / "run.json").read_text())["video"]
    # a rerun replaces its own export; a folder of something else is refused
    assert cli.main(["export", str(run / "checkpoints" / "step-0000002"), str(tmp_path / "e2")]) == 0
    assert cli.main(["export", str(run / "checkpoints" / "step-0000002"), str(run / "checkpoints")]) == 2


def test_lora_checkpoint_exports_merged_weights(tiny_model, cache, tmp_path):
    run = run_training(tiny_model, cache, tmp_path / "lora", "mode=lora", "lora_rank=4", "lora_alpha=8",
                       "validation_prompts=[]")
    assert cli.main(["export", str(run / "checkpoints" / "step-0000004"), str(tmp_path / "e")]) == 0
    assert tensors_equal(tmp_path / "e" / TRANSFORMER, run / "final" / TRANSFORMER)
    assert not tensors_equal(tmp_path / "e" / TRANSFORMER, tiny_model / TRANSFORMER)  # the deltas are in


def test_sample_accepts_a_checkpoint_folder(run, tmp_path):
    checkpoint = run / "checkpoints" / "step-0000002"
    assert cli.main(["export", str(checkpoint), str(tmp_path / "exported")]) == 0
    common = ["--prompt", "Incise the cornea.", "--steps", "2", *(f"--{k}={v}" for k, v in VIDEO.items())]
    assert cli.main(["sample", "--model", str(checkpoint), "--out", str(tmp_path / "a"), *common]) == 0
    assert cli.main(["sample", "--model", str(tmp_path / "exported"), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = read_video(tmp_path / "a" / "prompt" / "0.mp4")[0], read_video(tmp_path / "b" / "prompt" / "0.mp4")[0]
    assert a.shape == (9, 32, 32, 3) and np.array_equal(a, b)
    assert (run / "exports" / "step-0000002" / TRANSFORMER).is_file()  # exported once, reused next time


# ------------------------------------------------------------------------------------------- Generator


def test_generator_loads_once_and_matches_the_stock_pipeline(tiny_model, monkeypatch):
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    import ophora.sample.generate as generate_module

    loads = []
    original = generate_module.load_pipeline
    monkeypatch.setattr(generate_module, "load_pipeline", lambda *a, **k: loads.append(a) or original(*a, **k))
    gen = Generator(tiny_model, steps=2, **VIDEO)
    first = gen.generate("Inject viscoelastic.", seed=7)
    again = gen.generate("Inject viscoelastic.", seed=7)
    other = gen.generate("Inject viscoelastic.", seed=8)
    longer = gen.generate("Inject viscoelastic.", seed=7, steps=3, frames=17)
    assert len(loads) == 1
    assert first.shape == (9, 32, 32, 3) and first.dtype == np.uint8 and longer.shape == (17, 32, 32, 3)
    assert np.array_equal(first, again) and not np.array_equal(first, other)

    stock = CogVideoXPipeline.from_pretrained(tiny_model)
    stock.scheduler = CogVideoXDPMScheduler.from_config(stock.scheduler.config, timestep_spacing="trailing")
    ref = stock("Inject viscoelastic.", num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=6.0,
                use_dynamic_cfg=True, output_type="np", generator=torch.Generator().manual_seed(7)).frames[0]
    assert np.array_equal(first, to_uint8(ref))  # tolerance 0: the same uint8 frames


def test_generator_refuses_settings_it_cannot_change_per_call(tiny_model):
    from ophora.core.errors import ConfigError

    with pytest.raises(ConfigError, match="does not take out"):
        Generator(tiny_model, out="x")
    gen = Generator(tiny_model, steps=1, **VIDEO)
    with pytest.raises(ConfigError, match="cannot change dtype"):
        gen.generate("x", dtype="fp16")
    with pytest.raises(ConfigError, match="8k\\+1"):
        gen.generate("x", frames=10)


def test_step_progress_bar_counts_the_denoising_steps(tiny_model, capfd):
    Generator(tiny_model, steps=3, step_progress=True, **VIDEO).generate("Incise.", seed=1)
    err = capfd.readouterr().err
    assert "steps: " in err and "/3 [" in err  # the bar of 3 steps (cleared when done: leave=False)
    Generator(tiny_model, steps=3, step_progress=False, **VIDEO).generate("Incise.", seed=1)
    assert "steps: " not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------- authors' sampling


def test_authors_compatible_sampling_fixed_seed_and_one_based_names(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("clip id,caption prompt\nx,Incise the cornea.\ny,Inject viscoelastic.\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["sample", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
            "--seed", "1234", "--fixed-seed", "--one-based", *(f"--{k}={v}" for k, v in VIDEO.items())]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (out / "x").glob("*.mp4")) == ["1.mp4"]
    assert [json.loads((out / c / "1.json").read_text())["seed"] for c in "xy"] == [1234, 1234]
    frames = Generator(tiny_model, steps=2, **VIDEO).generate("Inject viscoelastic.", seed=1234)
    write_video(tmp_path / "ref.mp4", frames, fps=8)
    assert np.array_equal(read_video(out / "y" / "1.mp4")[0], read_video(tmp_path / "ref.mp4")[0])
    manifest = (out / "manifest.csv").read_text()
    assert "x/1.mp4" in manifest and "y/1.mp4" in manifest


# ------------------------------------------------------------------------------------------- training report


def test_training_report_plots_and_validation_videos(run):
    page = (run / "report.html").read_text()
    for name in ("loss", "lr", "grad_norm"):
        png = run / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="report/{name}.png"' in page
    for step in (2, 4):
        for i in range(2):
            assert f'src="validation/step-{step:07d}/{i}.mp4"' in page
            assert (run / "validation" / f"step-{step:07d}" / f"{i}.mp4").is_file()
    assert "Inject viscoelastic." in page and "4 of 4" in page
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert str(last["loss"]) in page


def test_report_of_any_run_folder_survives_a_half_written_metrics_line(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.')
    (copy / "report.html").unlink()
    assert write_report(copy) == copy / "report.html" and "4 of 4" in (copy / "report.html").read_text()


def test_the_authors_flag_spellings_are_aliases(tiny_model, tmp_path):
    common = ["sample", "--model", str(tiny_model), "--prompt", "Incise the cornea.", "--height", "32", "--width", "32"]
    authors = ["--num_frames", "9", "--num_inference_steps", "2", "--guidance_scale", "5", "--dtype", "float16"]
    ours = ["--frames", "9", "--steps", "2", "--guidance", "5", "--dtype", "fp16"]
    assert cli.main([*common, "--out", str(tmp_path / "a"), *authors]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "b"), *ours]) == 0
    settings = [json.loads((tmp_path / o / "sample_config.json").read_text()) for o in "ab"]
    assert [(s["frames"], s["steps"], s["guidance"], s["dtype"]) for s in settings] == [(9, 2, 5.0, "fp16")] * 2
    a, b = (read_video(tmp_path / o / "prompt" / "0.mp4")[0] for o in "ab")
    assert a.shape == (9, 32, 32, 3) and np.array_equal(a, b)
