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
