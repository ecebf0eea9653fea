"""A model's frame settings travel with it: the frame rate, frame count and size its cache was made at are
recorded by `train` in the run and the exported pipeline, and validation and `sample` default to them. The
cache here is made at 4 fps and 9 frames, so neither CogVideoX's 8 fps nor its 49 frames can pass."""

from __future__ import annotations

import json

import pytest

from ophora.cli import main
from ophora.core.media import read_video
from ophora.prepare.run import PrepareConfig, prepare
from ophora.train.trainer import train
from test_prepare import write_synthetic_dataset
from test_train import tiny_config


def test_the_caches_frame_rate_and_shape_reach_validation_and_sampling(tiny_model, tmp_path):
    dataset = write_synthetic_dataset(tmp_path / "dataset", bad=False)  # clips of 20 frames at 8 fps, 64x96
    cache = tmp_path / "cache"
    prepare(PrepareConfig(dataset=dataset, model=str(tiny_model), out=cache, frame_buckets=(9,), target_fps=4.0,
                          heights=(64,), widths=(96,)))
    run = train(tiny_config(tiny_model, cache, tmp_path / "run", "steps=1", "validate_every=1",
                            "validation_prompts=[Polish the posterior capsule.]"))
    trained_for = {"frames": 9, "height": 64, "width": 96, "fps": 4.0}
    assert json.loads((run / "run.json").read_text())["video"] == trained_for
    assert json.loads((run / "final" / "ophora_train.json").read_text())["video"] == trained_for
    video, fps = read_video(run / "validation" / "step-0000001" / "0.mp4")  # tiny-tpt.yaml asks for 64x64
    assert video.shape == (9, 64, 64, 3) and fps == pytest.approx(4)
    assert main(["sample", "--model", str(run / "final"), "--prompt", "Polish the capsule.", "--out",
                 str(tmp_path / "samples"), "--steps", "1"]) == 0
    video, fps = read_video(tmp_path / "samples" / "prompt" / "0.mp4")
    assert video.shape == (9, 64, 96, 3) and fps == pytest.approx(4)
    record = json.loads((tmp_path / "samples" / "prompt" / "0.json").read_text())
    assert (record["frames"], record["fps"]) == (9, 4)


def _trained_for(model, tmp_path, video: dict):
    """A copy of the tiny model whose training record says it was trained at `video`."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    (folder / "ophora_train.json").write_text(json.dumps({"video": video}))
    return folder


def test_a_fractional_frame_rate_is_kept_not_truncated(tiny_model, tmp_path):
    model = _trained_for(tiny_model, tmp_path, {"frames": 9, "height": 64, "width": 96, "fps": 7.5})
    assert main(["sample", "--model", str(model), "--prompt", "Polish the capsule.", "--out", str(tmp_path / "s"),
                 "--steps", "1"]) == 0
    video, fps = read_video(tmp_path / "s" / "prompt" / "0.mp4")
    assert video.shape == (9, 64, 96, 3) and fps == pytest.approx(7.5)
    assert json.loads((tmp_path / "s" / "prompt" / "0.json").read_text())["fps"] == 7.5


def test_frame_counts_cogvideox_cannot_decode_are_refused_in_prepare_and_named_in_sample(tiny_model, tmp_path, capsys):
    dataset = write_synthetic_dataset(tmp_path / "dataset", bad=False)
    assert main(["prepare", str(dataset), "--model", str(tiny_model), "--out", str(tmp_path / "cache"),
                 "--frame-buckets", "13", "--heights", "64", "--widths", "96"]) == 2
    err = capsys.readouterr().err.strip()
    assert "frame buckets must be of the form 8k+1" in err and "13" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    model = _trained_for(tiny_model, tmp_path, {"frames": 13, "height": 64, "width": 96, "fps": 8})  # an older cache
    assert main(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "s"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on 13-frame clips" in err and "--frames" in err and len(err.splitlines()) == 1
    assert main(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "s"), "--steps", "1",
                 "--frames", "9"]) == 0
