"""`ophora sample` on the tiny model: outputs, determinism, equality with diffusers, sharding, resume, errors."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ophora import cli
from ophora.core.media import probe_video, read_video, to_uint8, write_video
from ophora.sample.config import SampleConfig
from ophora.sample.generate import generate, prepare_pipeline
from ophora.sample.jobs import plan_jobs, video_seed
from ophora.sample.run import sample

SMALL = dict(frames=9, height=48, width=80, steps=2)


def write_prompts(path: Path, rows: list[tuple[str, str]], columns=("clip id", "caption prompt")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return path


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_prompts(tmp_path / "prompts.csv", [
        ("incision_1", "Create the main incision with a keratome."),
        ("capsulorhexis_1", "Perform a continuous curvilinear capsulorhexis."),
        ("phaco_1", "Emulsify the nucleus with the phaco probe."),
    ])


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def decoded(out: Path, clip_id: str, n: int = 0) -> np.ndarray:
    return read_video(out / clip_id / f"{n}.mp4")[0]


def test_outputs_have_requested_frames_fps_size(tiny_model, prompts, tmp_path):
    out = tmp_path / "out"
    summary = sample(SampleConfig(model=str(tiny_model), out=out, prompts=prompts, videos_per_prompt=2, fps=6, **SMALL))
    assert (summary.made, summary.failed) == (6, 0)
    for clip_id in ("incision_1", "capsulorhexis_1", "phaco_1"):
        for n in (0, 1):
            info = probe_video(out / clip_id / f"{n}.mp4")
            assert (info.width, info.height, info.fps, info.codec) == (80, 48, 6.0, "h264")
            frames = decoded(out, clip_id, n)
            assert frames.shape == (9, 48, 80, 3)
            assert frames.std() > 0  # not a blank video
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [c for c in rows[0]] == ["clip id", "n", "prompt", "seed", "model", "steps", "guidance", "frames",
                                   "fps", "size", "seconds", "path"]
    assert len(rows) == 6 and {r["size"] for r in rows} == {"80x48"}
    assert int(rows[0]["seed"]) == video_seed(42, rows[0]["clip id"], int(rows[0]["n"]))
    page = (out / "index.html").read_text()
    assert page.count("<video") == 6 and 'src="incision_1/1.mp4"' in page
    assert "continuous curvilinear capsulorhexis" in page
    # the two videos of one prompt use different seeds, so they differ
    assert not np.array_equal(decoded(out, "phaco_1", 0), decoded(out, "phaco_1", 1))


def test_same_seed_same_frames_other_seed_other_frames(tiny_model, tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        sample(SampleConfig(model=str(tiny_model), out=out, prompt="Polish the posterior capsule.", seed=seed, **SMALL))
        runs[name] = decoded(out, "prompt")
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_matches_diffusers_pipeline_exactly(tiny_model, tmp_path):
    """Same model, seed and settings: our frames equal CogVideoXPipeline's bit for bit (fp32, CPU)."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    config = SampleConfig(model=str(tiny_model), out=tmp_path / "out", prompt="Inject viscoelastic.",
                          negative_prompt="blurry", **SMALL)
    job = plan_jobs([("prompt", config.prompt)], 1, config.seed)[0]
    ours = generate(prepare_pipeline(config, "cpu"), config, job, "cpu")

    stock = CogVideoXPipeline.from_pretrained(tiny_model)
    stock.scheduler = CogVideoXDPMScheduler.from_config(stock.scheduler.config, timestep_spacing="trailing")
    ref = stock("Inject viscoelastic.", negative_prompt="blurry", num_frames=9, height=48, width=80,
                num_inference_steps=2, guidance_scale=6.0, use_dynamic_cfg=True, output_type="np",
                generator=torch.Generator().manual_seed(job.seed)).frames[0]
    assert np.array_equal(ours, to_uint8(ref))  # tolerance: 0 (identical uint8 frames)

    # through the file: the CLI's mp4 decodes to exactly what encoding the stock frames gives
    sample(config)
    write_video(tmp_path / "stock.mp4", to_uint8(ref), fps=8)
    assert np.array_equal(decoded(config.out, "prompt"), read_video(tmp_path / "stock.mp4")[0])


def test_ddim_scheduler_and_constant_cfg_run(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(tiny_model), "--out", str(out), "--prompt", "Rotate the lens.",
                   "--scheduler", "ddim", "--no-dynamic-cfg", "--frames", "17", "--height", "32", "--width", "32",
                   "--steps", "2") == 0
    assert decoded(out, "prompt").shape == (17, 32, 32, 3)


def test_txt_prompts_file(tiny_model, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Create the incision.\n\n  Inject viscoelastic.  \n")
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(tiny_model), "--out", str(out), "--prompts", str(path),
                   "--frames", "9", "--height", "32", "--width", "32", "--steps", "1") == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [(r["clip id"], r["prompt"]) for r in rows] == [("0001", "Create the incision."), ("0002", "Inject viscoelastic.")]


def test_resume_skips_finished_and_redoes_missing(tiny_model, prompts, tmp_path):
    out = tmp_path / "out"
    config = dict(model=str(tiny_model), out=out, prompts=prompts, **SMALL)
    assert sample(SampleConfig(**config)).made == 3
    before = (out / "incision_1" / "0.mp4").stat().st_mtime_ns
    # an interrupted write leaves only a partial file, which never counts as finished
    (out / "phaco_1" / "0.mp4").unlink()
    (out / "phaco_1" / ".0.partial123.mp4").write_bytes(b"half a video")
    summary = sample(SampleConfig(**config))
    assert (summary.made, summary.skipped) == (1, 2)
    assert (out / "incision_1" / "0.mp4").stat().st_mtime_ns == before
    assert decoded(out, "phaco_1").shape == (9, 48, 80, 3)
    assert sample(SampleConfig(**config, overwrite=True)).made == 3
    assert len(list(csv.DictReader((out / "manifest.csv").open()))) == 3


def test_rerun_with_other_settings_is_refused(tiny_model, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["sample", "--model", str(tiny_model), "--out", str(out), "--prompts", str(prompts),
            "--frames", "9", "--height", "32", "--width", "32"]
    assert run_cli(*base, "--steps", "1") == 0
    assert run_cli(*base, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "made with other settings (steps 1 -> 2)" in err and "--overwrite" in err


def test_one_failing_video_is_recorded_and_the_rest_go_on(tiny_model, prompts, tmp_path, monkeypatch):
    import ophora.sample.run as sample_module

    real = sample_module.generate

    def flaky(pipe, config, job, device):
        if job.clip_id == "capsulorhexis_1":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(pipe, config, job, device)

    monkeypatch.setattr(sample_module, "generate", flaky)
    out = tmp_path / "out"
    summary = sample(SampleConfig(model=str(tiny_model), out=out, prompts=prompts, **SMALL))
    assert (summary.made, summary.failed) == (2, 1)
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert failures == [{"clip id": "capsulorhexis_1", "n": "0", "error_type": "RuntimeError",
                         "error": "CUDA out of memory (simulated)"}]
    assert {r["clip id"] for r in csv.DictReader((out / "manifest.csv").open())} == {"incision_1", "phaco_1"}
    monkeypatch.setattr(sample_module, "generate", real)
    assert sample(SampleConfig(model=str(tiny_model), out=out, prompts=prompts, **SMALL)).made == 1
    assert list(csv.DictReader((out / "failures.csv").open())) == []


def test_lora_changes_output_and_scale_zero_is_the_base_model(tiny_model, tmp_path):
    from diffusers import CogVideoXPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = CogVideoXPipeline.from_pretrained(tiny_model)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    for name, param in pipe.transformer.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)
    lora_dir = tmp_path / "lora"
    CogVideoXPipeline.save_lora_weights(lora_dir, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))

    frames = {}
    for name, extra in (("base", {}), ("lora", {"lora": str(lora_dir)}), ("zero", {"lora": str(lora_dir), "lora_scale": 0.0})):
        out = tmp_path / name
        sample(SampleConfig(model=str(tiny_model), out=out, prompt="Aspirate the cortex.", **SMALL, **extra))
        frames[name] = decoded(out, "prompt")
    assert not np.array_equal(frames["base"], frames["lora"])
    assert np.array_equal(frames["base"], frames["zero"])


def torchrun(port: int, *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "ophora", *argv]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_two_ranks_make_the_same_videos_as_one(tiny_model, prompts, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--model", str(tiny_model), "--prompts", str(prompts), "--videos-per-prompt", "2",
            "--frames", "9", "--height", "48", "--width", "80", "--steps", "2"]
    assert run_cli("sample", "--out", str(one), *args) == 0
    result = torchrun(29517, "sample", "--out", str(two), *args)
    assert "rank 1: made 3" in result.stderr and "rank 0: made 3" in result.stderr
    rows = {name: list(csv.DictReader((d / "manifest.csv").open())) for name, d in (("one", one), ("two", two))}
    key = lambda r: (r["clip id"], r["n"], r["seed"], r["prompt"])  # noqa: E731
    assert sorted(map(key, rows["one"])) == sorted(map(key, rows["two"]))
    for r in rows["one"]:
        assert np.array_equal(read_video(one / r["path"])[0], read_video(two / r["path"])[0])


def test_cfg_parallel_pair_matches_one_process(tiny_model, prompts, tmp_path):
    """Two ranks each run one CFG half; the videos equal a one-process run's up to float rounding of
    batch-1 versus batch-2 matrix products (at most 2 of 255 levels here)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--model", str(tiny_model), "--prompts", str(prompts), "--frames", "9", "--height", "48",
            "--width", "80", "--steps", "3"]
    assert run_cli("sample", "--out", str(one), *args) == 0
    result = torchrun(29518, "sample", "--out", str(two), "--cfg-parallel", *args)
    assert "rank 0: made 3" in result.stderr and "rank 1: made 3" in result.stderr  # both ranks work on every video
    assert len(list(csv.DictReader((two / "manifest.csv").open()))) == 3
    for clip_id in ("incision_1", "capsulorhexis_1", "phaco_1"):
        a, b = decoded(one, clip_id), decoded(two, clip_id)
        assert a.shape == b.shape == (9, 48, 80, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


# ------------------------------------------------------------------------------------------- bad input


def expect_error(capsys, *argv: str) -> str:
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_prompt_files(tiny_model, tmp_path, capsys):
    base = ["sample", "--model", str(tiny_model), "--out", str(tmp_path / "o")]
    err = expect_error(capsys, *base, "--prompts", str(tmp_path / "nope.csv"))
    assert "prompts file not found" in err and "nope.csv" in err

    wrong = write_prompts(tmp_path / "wrong.csv", [("a", "b")], columns=("id", "text"))
    err = expect_error(capsys, *base, "--prompts", str(wrong))
    assert "no column 'clip id', 'caption prompt'" in err and "its columns are 'id', 'text'" in err
    assert run_cli(*base, "--prompts", str(wrong), "--id-column", "id", "--prompt-column", "text",
                   "--frames", "9", "--height", "32", "--width", "32", "--steps", "1") == 0
    capsys.readouterr()

    empty = write_prompts(tmp_path / "empty.csv", [("a", "Inject."), ("b", "  ")])
    assert "line 3: empty prompt for clip id 'b'" in expect_error(capsys, *base, "--prompts", str(empty))

    dup = write_prompts(tmp_path / "dup.csv", [("a", "Inject."), ("b", "Cut."), ("a", "Rotate.")])
    assert "duplicate clip id 'a' on lines 2 and 4" in expect_error(capsys, *base, "--prompts", str(dup))

    bad_id = write_prompts(tmp_path / "badid.csv", [("../x", "Inject.")])
    assert "cannot be a file or folder name" in expect_error(capsys, *base, "--prompts", str(bad_id))

    nothing = tmp_path / "nothing.txt"
    nothing.write_text("\n\n")
    assert "holds no prompts" in expect_error(capsys, *base, "--prompts", str(nothing))


def test_bad_settings(tiny_model, tmp_path, capsys):
    base = ["sample", "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--prompt", "Cut."]
    assert "--frames must be of the form 8k+1" in expect_error(capsys, *base, "--frames", "10")
    assert "needs that number odd" in expect_error(capsys, *base, "--frames", "13")
    assert "--height must be a positive multiple of 16, got 50" in expect_error(capsys, *base, "--height", "50")
    assert "--width must be a positive multiple of 16, got 721" in expect_error(capsys, *base, "--width", "721")
    assert "LoRA weights not found" in expect_error(capsys, *base, "--lora", str(tmp_path / "none"))
    assert "needs --guidance > 1" in expect_error(capsys, *base, "--cfg-parallel", "--guidance", "1")
    assert "--prompt is empty" in expect_error(capsys, "sample", "--model", str(tiny_model), "--out", "o", "--prompt", " ")


def test_bad_models(tiny_model, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer")
    args = ["--out", str(tmp_path / "o"), "--prompt", "Cut."]
    err = expect_error(capsys, "sample", "--model", str(broken), *args)
    assert f"model folder {broken} is incomplete: missing vae weights, tokenizer" in err

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    err = expect_error(capsys, "sample", "--model", "General-Medical-AI/Ophora", *args)
    assert "cannot get 'General-Medical-AI/Ophora' from the Hugging Face hub" in err and "--model PATH" in err

    err = expect_error(capsys, "sample", "--model", str(tmp_path / "no" / "such" / "dir"), *args)
    assert "neither an existing local folder nor a hub id" in err


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("ophora")
    result = subprocess.run([str(exe), "sample", "--model", "x/y", "--out", str(tmp_path), "--prompt", "a", "--frames", "8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("ophora sample: error: --frames must be of the form 8k+1 (9, 17, 25, 33, 41, 49), "
                                     "got 8: CogVideoX's VAE turns (frames - 1) / 4 + 1 latent frames into video and "
                                     "needs that number odd")
    assert result.stdout == ""


def test_reuse_needs_the_same_weights_and_pixel_settings(tiny_model, tmp_path, capsys):
    """A finished video is reused only if the weights loaded and every pixel-changing setting are unchanged."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    base = ["sample", "--model", str(model), "--out", str(tmp_path / "o"), "--prompt", "Cut.", "--frames", "9",
            "--height", "32", "--width", "32", "--steps", "1"]
    assert run_cli(*base) == 0
    made = (tmp_path / "o" / "prompt" / "0.mp4").stat().st_mtime_ns
    assert run_cli(*base) == 0  # same everything: skipped
    assert (tmp_path / "o" / "prompt" / "0.mp4").stat().st_mtime_ns == made
    capsys.readouterr()
    for flag, value in (("--qp", "20"), ("--dtype", "fp16")):
        assert "made with other settings" in expect_error(capsys, *base, flag, value)
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # re-saved in place, as further training into the same folder does
    assert "weights" in expect_error(capsys, *base)
    assert run_cli(*base, "--overwrite") == 0


def test_overwrite_leaves_only_the_current_settings_in_manifest_and_gallery(tiny_model, tmp_path, prompts):
    out = tmp_path / "o"
    two = write_prompts(tmp_path / "two.csv", [("phaco_1", "Emulsify."), ("incision_1", "Cut.")])
    assert run_cli("sample", "--model", str(tiny_model), "--out", str(out), "--prompts", str(prompts),
                   "--frames", "9", "--height", "32", "--width", "32", "--steps", "1") == 0
    assert run_cli("sample", "--model", str(tiny_model), "--out", str(out), "--prompts", str(two), "--overwrite",
                   "--frames", "9", "--height", "32", "--width", "32", "--steps", "2") == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [(r["clip id"], r["steps"]) for r in rows] == [("phaco_1", "2"), ("incision_1", "2")]  # prompt-file order
    page = (out / "index.html").read_text()
    assert "capsulorhexis_1" not in page and page.index("phaco_1") < page.index("incision_1")


def test_records_outside_the_folder_or_damaged_are_not_trusted(tiny_model, tmp_path):
    out = tmp_path / "o"
    argv = ["sample", "--model", str(tiny_model), "--out", str(out), "--prompt", "Cut.", "--frames", "9",
            "--height", "32", "--width", "32", "--steps", "1"]
    assert run_cli(*argv) == 0
    (out / "prompt" / "0.json").write_text("{damaged")
    assert run_cli(*argv) == 0  # remade, not a crash
    assert len(list(csv.DictReader((out / "manifest.csv").open()))) == 1
    outside = tmp_path / "elsewhere.mp4"
    shutil.move(out / "prompt" / "0.mp4", outside)
    (out / "prompt" / "0.mp4").symlink_to(outside)
    assert run_cli(*argv) == 0  # a symlinked video is not taken as done
    assert not (out / "prompt" / "0.mp4").is_symlink()


def test_a_crafted_record_cannot_point_the_manifest_or_gallery_elsewhere(tiny_model, tmp_path):
    import json
    from urllib.parse import unquote

    clip_id = "a#b?c%d"  # characters that break an unencoded link
    prompts = write_prompts(tmp_path / "p.csv", [(clip_id, "Incise.")])
    argv = ["sample", "--model", str(tiny_model), "--out", str(tmp_path / "o"), "--prompts", str(prompts),
            "--frames", "9", "--height", "32", "--width", "32", "--steps", "1"]
    assert run_cli(*argv) == 0
    record_file = tmp_path / "o" / clip_id / "0.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "path": "/etc/passwd", "clip_id": "x", "prompt": "<script>"}))
    assert run_cli(*argv) == 0  # the video is still the right one: reused
    rows = list(csv.DictReader((tmp_path / "o" / "manifest.csv").open()))
    assert [(r["clip id"], r["prompt"], r["path"]) for r in rows] == [(clip_id, "Incise.", f"{clip_id}/0.mp4")]
    page = (tmp_path / "o" / "index.html").read_text()
    links = [part.split('"')[0] for part in page.split('src="')[1:]]
    assert links == ["a%23b%3Fc%25d/0.mp4"] and "passwd" not in page and "<script>" not in page
    assert (tmp_path / "o" / unquote(links[0])).is_file()
