"""Bad input, bad settings, bad files: each class ends in one line naming the file or setting, exit 2, before work.

Every case goes through `ophora.cli.main`, as a user's command line would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ophora import cli
from ophora.synthetic.narrated_videos import narrated_plan, write_narrated_video, write_sidecar
from review_helpers import make_samples
from test_train import cache, dataset  # noqa: F401  (the shared module fixtures)

LONG_STEM = "a" * 240  # a 240-byte file name stem
CJK_STEM = "白内障手術" * 16  # 80 CJK characters: 240 bytes of UTF-8


def one_line_error(capsys, *argv: str) -> str:
    """Run the CLI, expect exit 2 with exactly one line on stderr and no traceback; return that line."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def narrated(tmp_path_factory) -> Path:
    """One synthetic narrated video (cataract_a) with its .srt sidecar."""
    folder = tmp_path_factory.mktemp("narrated")
    video = narrated_plan()[0]
    write_narrated_video(video, folder, fps=15.0, seed=0)
    write_sidecar(video, folder)
    return folder


# ------------------------------------------------------------------------------------------- output paths

def command_lines(model: Path, out: str) -> dict[str, list[str]]:
    """A valid command line of every command that writes, with `out` as its output folder."""
    return {
        "curate": ["curate", str(model), "--out", out],
        "prepare": ["prepare", str(model), "--model", str(model), "--out", out],
        "train": ["train", "tiny-tpt", f"model={model}", "cache=cache", f"out={out}"],
        "sample": ["sample", "--model", str(model), "--prompt", "Incise.", "--out", out],
        "export": ["export", str(model / "checkpoints" / "step-1"), out],
        "evaluate": ["evaluate", "--real", str(model), "--generated", str(model), "--out", out],
        "demo": ["demo", "--out", out],
        "make-random-model": ["make-random-model", out],
        "make-narrated-videos": ["make-narrated-videos", out],
        "review create": ["review", "create", out, "--generated", str(model)],
        "review export": ["review", "export", str(model), "--out", out],
        "downstream": ["downstream", "--annotations", str(model), "--videos", str(model), "--out", out],
        "make-surgery-world": ["make-surgery-world", out],
        "evaluate --cache": ["evaluate", "--real", str(model), "--generated", str(model), "--out", str(model / "o"),
                             "--cache", out],
    }


COMMANDS = list(command_lines(Path("m"), "o"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["a file", "inside a file", "read-only file system", "full disk"])
def test_unusable_output_folders_are_refused_before_work(command, kind, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = {"a file": blocker, "inside a file": blocker / "sub" / "out", "read-only file system": Path("/sys/ophora-out"),
           "full disk": tmp_path / "new" / "out"}[kind]
    if kind == "read-only file system" and not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    if kind == "full disk" and command == "evaluate --cache":
        pytest.skip("--out, checked first, is on the same (full) disk")
    if kind == "full disk":
        monkeypatch.setattr("ophora.core.files.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(100, 99, 1))
    line = one_line_error(capsys, *command_lines(tmp_path, str(out))[command])
    assert f"output folder {out}" in line
    assert {"a file": "is a file", "inside a file": "which is a file", "read-only file system": "cannot be written",
            "full disk": "full disk"}[kind] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # nothing was made


@pytest.mark.parametrize("error", ["ENOSPC", "EROFS"])
def test_a_write_refused_mid_run_is_one_line_naming_the_file(error, tiny_model, cache, tmp_path, capsys, monkeypatch):
    """The disk fills up (or turns read-only) after the up-front checks: the write that fails is named, exit 2."""
    import errno
    import os

    from ophora.train import trainer

    target = tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors"

    def refused(*args, **kwargs):
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)), str(target))

    monkeypatch.setattr(trainer, "save_checkpoint", refused)
    assert cli.main(["train", "tiny-tpt", f"model={tiny_model}", f"cache={cache}", f"out={tmp_path / 'run'}",
                     "steps=2", "checkpoint_every=2", "batch_size=1", "validation_prompts=[]", "export=false"]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # after the progress bar
    assert "Traceback" not in err and line.startswith(f"ophora train: error: {target}: {os.strerror(getattr(errno, error))}")
    assert "free some space" in line and "rerun to resume" in line


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root may write into read-only folders")
def test_read_only_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    line = one_line_error(capsys, "make-random-model", str(folder / "model"))
    assert "cannot be written" in line and str(folder / "model") in line


# ------------------------------------------------------------------------------------------- names and ids

def test_sources_with_names_at_the_file_system_limit_are_curated(narrated, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    for stem in (LONG_STEM, CJK_STEM):
        shutil.copy(narrated / "cataract_a.mp4", source / f"{stem}.mp4")
        shutil.copy(narrated / "cataract_a.srt", source / f"{stem}.srt")
    assert cli.main(["curate", str(source), "--out", str(tmp_path / "ds"), "--workers", "1"]) == 0
    clips = sorted(p.name for p in (tmp_path / "ds" / "clips").iterdir())
    assert any(c.startswith(LONG_STEM + "_") for c in clips) and any(c.startswith(CJK_STEM + "_") for c in clips)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("clip_id, problem", [
    ("a\x00b", "cannot be a file or folder name"), ("tab\there", "cannot be a file or folder name"),
    ("x" * 256, "256 bytes long"), ("é" * 128, "256 bytes long"), ("..", "cannot be a file or folder name"),
    ("a/b", "cannot be a file or folder name"),
])
def test_ids_that_cannot_name_a_file_are_refused(tiny_model, tmp_path, capsys, clip_id, problem):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f'clip id,caption prompt\nok,Incise.\n"{clip_id}",Inject.\n', encoding="utf-8")
    line = one_line_error(capsys, "sample", "--model", str(tiny_model), "--prompts", str(prompts),
                          "--out", str(tmp_path / "out"))
    assert f"{prompts} line 3: clip id" in line and problem in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("clip_id", [LONG_STEM, CJK_STEM, "x" * 255], ids=["240-bytes", "80-cjk", "255-bytes"])
def test_sample_ids_at_the_file_system_limit_work(tiny_model, tmp_path, clip_id):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"clip id,caption prompt\n{clip_id},Incise.\n", encoding="utf-8")
    argv = ["sample", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(tmp_path / "out"),
            "--steps", "1", "--frames", "9", "--height", "32", "--width", "32"]
    assert cli.main(argv) == 0
    assert (tmp_path / "out" / clip_id / "0.mp4").stat().st_size > 0


# ------------------------------------------------------------------------------------------- sidecars

def test_transcript_nested_100000_deep_skips_its_source_only(narrated, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    for stem in ("deep", "fine"):
        shutil.copy(narrated / "cataract_a.mp4", source / f"{stem}.mp4")
    (source / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    shutil.copy(narrated / "cataract_a.srt", source / "fine.srt")
    assert cli.main(["curate", str(source), "--out", str(tmp_path / "ds"), "--workers", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    summary = json.loads((tmp_path / "ds" / "summary.json").read_text())
    skipped = (tmp_path / "ds" / "skipped_sources.csv").read_text()
    assert "deep.mp4" in skipped and "bad_subtitles" in skipped and "nested too deeply" in skipped
    assert summary["clips"]["kept"] > 0 and all(p.name.startswith("fine_") for p in (tmp_path / "ds" / "clips").iterdir())


# ------------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("override, named", [
    ("beta1=2", "beta1"), ("beta2=1", "beta2"), ("beta2=-0.1", "beta2"), ("epsilon=0", "epsilon"),
    ("epsilon=-1e-8", "epsilon"), ("epsilon=.nan", "epsilon"), ("weight_decay=-0.1", "weight_decay"),
    ("num_workers=-1", "num_workers"), ("batch_size=true", "batch_size"), ("batch_size=0", "batch_size"),
    ("batch_size=2.5", "batch_size"), ("learning_rate=.nan", "learning_rate"), ("learning_rate=.inf", "learning_rate"),
    ("learning_rate=0", "learning_rate"), ("max_grad_norm=.nan", "max_grad_norm"), ("warmup_steps=-1", "warmup_steps"),
    ("lr_cycles=0", "lr_cycles"), ("lr_schedule=cosine_restarts", "lr_schedule"), ("grad_accum=0", "grad_accum"),
    ("validation_height=30", "validation_height"), ("validation_width=0", "validation_width"),
    ("validation_frames=10", "validation_frames"), ("validation_steps=0", "validation_steps"),
    ("optimizer=sgd", "optimizer"), ("mode=lora lora_targets=[]", "lora_targets"),
])
def test_settings_the_libraries_reject_are_refused_up_front(override, named, tmp_path, capsys):
    line = one_line_error(capsys, "train", "tiny-tpt", "model=m", "cache=c", f"out={tmp_path / 'run'}",
                          *override.split())
    assert named in line
    assert not (tmp_path / "run").exists()


def test_lora_targets_matching_no_module_are_refused_before_training(tiny_model, cache, tmp_path, capsys):
    run = tmp_path / "run"
    line = one_line_error(capsys, "train", "tiny-tpt", f"model={tiny_model}", f"cache={cache}", f"out={run}",
                          "mode=lora", "lora_targets=[to_q,to_qq]", "validation_prompts=[]")
    assert "lora_targets 'to_qq' match no linear layer" in line and "to_q," in line
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


@pytest.mark.parametrize("flags, named", [
    (["--crf", "-1"], "--crf"), (["--crf", "52"], "--crf"), (["--min-width", "-5"], "min-width"),
    (["--min-seconds", "-1"], "min"), (["--workers", "0"], "--workers"),
])
def test_bad_curate_settings(narrated, tmp_path, capsys, flags, named):
    line = one_line_error(capsys, "curate", str(narrated), "--out", str(tmp_path / "ds"), *flags)
    assert named.replace("--", "").replace("-", "_") in line.replace("-", "_")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("flags, named", [
    (["--qp", "-1"], "--qp"), (["--qp", "52"], "--qp"), (["--steps", "0"], "--steps"),
    (["--frames", "10"], "--frames"), (["--height", "50", "--frames", "9"], "--height"),
    (["--fixed-seed", "--videos-per-prompt", "2"], "--fixed-seed"), (["--guidance", "nan"], "--guidance"),
])
def test_bad_sample_settings(tiny_model, tmp_path, capsys, flags, named):
    err = None
    try:
        line = one_line_error(capsys, "sample", "--model", str(tiny_model), "--prompt", "Incise.",
                              "--out", str(tmp_path / "out"), *flags)
    except SystemExit as exc:  # argparse refuses a malformed number itself: its usage line, exit 2
        assert exc.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and named in err
        return
    assert named in line and err is None
    assert not (tmp_path / "out").exists()


def test_export_of_something_that_is_not_a_checkpoint(tiny_model, tmp_path, capsys):
    line = one_line_error(capsys, "export", str(tiny_model), str(tmp_path / "out"))
    assert "is not a checkpoint of an ophora run" in line and str(tiny_model) in line


# ------------------------------------------------------------------------------------------- listings of videos

@pytest.fixture(scope="module")
def listed_twice(tmp_path_factory) -> Path:
    """A sample output folder whose manifest lists one video on two lines."""
    folder = make_samples(tmp_path_factory.mktemp("samples"), per_phase=1)
    lines = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    return folder


@pytest.mark.parametrize("command", ["evaluate", "downstream", "review create"])
def test_a_video_listed_twice_is_refused_naming_both_lines(command, listed_twice, tmp_path, capsys):
    from ophora.synthetic.phase_videos import make_phase_cases

    real = make_phase_cases(tmp_path / "real", {f"case_{i}": ["Incision"] for i in (1, 2, 3)}, seconds=1.0)
    argv = {"evaluate": ["evaluate", "--real", str(real / "videos"), "--generated", str(listed_twice),
                         "--metrics", "temporal", "--out", str(tmp_path / "out")],
            "downstream": ["downstream", "--annotations", str(real / "annotations"), "--videos", str(real / "videos"),
                           "--synthetic", str(listed_twice), "--out", str(tmp_path / "out")],
            "review create": ["review", "create", str(tmp_path / "out"), "--generated", str(listed_twice)]}[command]
    line = one_line_error(capsys, *argv)
    assert str(listed_twice / "manifest.csv") in line and "lines 2 and 5" in line and "capsulorhexis_1" in line
    assert not (tmp_path / "out").exists()


def test_two_videos_under_one_name_are_refused(tmp_path):
    from ophora.core.errors import InputError
    from ophora.core.manifests import read_manifest

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("clip id,prompt,path\nincision_1,Cut.,a.mp4\nincision_1,Cut.,b.mp4\n")
    with pytest.raises(InputError, match="lines 2 and 3 list the same video 'incision_1'"):
        read_manifest(manifest)
    manifest.write_text("clip id,n,prompt,path\nincision_1,0,Cut.,a.mp4\nincision_1,1,Cut.,b.mp4\n")
    assert [v.id for v in read_manifest(manifest)] == ["incision_1/0", "incision_1/1"]


def test_review_settings_that_would_make_broken_links_or_no_interval(listed_twice, tmp_path, capsys):
    folder = make_samples(tmp_path / "samples", per_phase=1)
    study = tmp_path / "study"
    assert cli.main(["review", "create", str(study), "--generated", str(folder)]) == 0
    capsys.readouterr()
    for url in ("not a url", "ftp://host/", "http://"):
        assert "--url" in one_line_error(capsys, "review", "add-rater", str(study), "x", "--url", url)
    assert "--bootstrap" in one_line_error(capsys, "review", "export", str(study), "--out", str(tmp_path / "e"),
                                           "--bootstrap", "-1")
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------------------- nothing to do, transient failures

def test_curate_with_no_videos_or_into_its_input_folder_is_one_line(narrated, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "talk.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nIncise.\n")
    assert "no videos" in one_line_error(capsys, "curate", str(tmp_path / "empty"), "--out", str(tmp_path / "ds"))
    for out in (narrated, narrated / "sub" / ".."):
        assert "is the input folder" in one_line_error(capsys, "curate", str(narrated), "--out", str(out))
    assert sorted(p.name for p in narrated.iterdir()) == ["cataract_a.mp4", "cataract_a.srt"]


def test_random_model_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    line = one_line_error(capsys, "make-random-model", str(tmp_path / "m"))
    assert str(tmp_path / "m") in line and "not an empty folder" in line
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["notes.txt"]


def test_clips_a_full_disk_refused_are_written_on_the_rerun(narrated, tmp_path, monkeypatch):
    """A clip write the file system refuses (ENOSPC) is no decision about the content: the source's record is not
    kept, so the rerun processes it again and keeps exactly the clips the failure cost."""
    import errno

    import pandas as pd

    from ophora.core import media
    from ophora.curate import pipeline

    def full_disk(target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    out = tmp_path / "ds"
    config = pipeline.CurateConfig(input=narrated, out=out, workers=1)
    monkeypatch.setattr(media, "atomic_path", full_disk)  # every clip file write
    first = pipeline.curate(config)
    failed = pd.read_parquet(out / "manifest.parquet").query("reason == 'write_failed'")
    assert first["clips"]["kept"] == 0 and len(failed) == first["clips"]["dropped_by_reason"]["write_failed"] > 0
    assert not list((out / ".work").glob("*.json")) and not list((out / "clips").glob("*.mp4"))
    monkeypatch.undo()
    again = pipeline.curate(config)
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("clip id")
    assert again["clips"]["kept"] == len(failed) and "write_failed" not in again["clips"]["dropped_by_reason"]
    assert (manifest.loc[failed["clip id"], "decision"] == "keep").all()
    assert sorted(p.stem for p in (out / "clips").glob("*.mp4")) == sorted(failed["clip id"])
    assert len(list((out / ".work").glob("*.json"))) == 1  # the decisions are final now


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", ["sample", "prepare", "evaluate", "downstream"])
def test_device_cuda_without_cuda_is_one_line_before_work(command, tiny_model, dataset, tmp_path, capsys):
    from ophora.synthetic.phase_videos import make_phase_cases

    real = make_phase_cases(tmp_path / "real", {f"case_{i}": ["Incision"] for i in (1, 2, 3)}, seconds=1.0)
    out = str(tmp_path / "out")
    argv = {"sample": ["sample", "--model", str(tiny_model), "--prompt", "Incise.", "--out", out],
            "prepare": ["prepare", str(dataset), "--model", str(tiny_model), "--out", out],
            "evaluate": ["evaluate", "--real", str(real / "videos"), "--generated", str(real / "videos"),
                         "--metrics", "temporal", "--out", out],
            "downstream": ["downstream", "--annotations", str(real / "annotations"), "--videos", str(real / "videos"),
                           "--out", out]}[command]
    line = one_line_error(capsys, *argv, "--device", "cuda")
    assert "--device cuda: this machine has no CUDA GPU" in line and "--device cpu" in line
    assert not (tmp_path / "out").exists()
