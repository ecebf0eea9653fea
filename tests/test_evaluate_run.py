"""`ophora evaluate` end to end: outputs, the feature cache, skipped metrics, one-line errors, inputs, the privacy
leakage rate on real Cataract-1K footage and the memorisation check."""

from __future__ import annotations

import json
import os
import signal

import cv2
import numpy as np
import pytest

from evaluate_helpers import texture_video, weights, write_sample_output, write_set  # noqa: F401
from ophora.cli import main
from ophora.core.media import read_video, write_video
from ophora.evaluate import EvaluateConfig, evaluate
from ophora.evaluate.inputs import read_videos

ITEMS = [("incision_1", "make the incision", 31), ("incision_2", "make the incision", 32),
         ("capsulorhexis_1", "tear the capsule", 33)]


def test_cli_end_to_end_then_cache_computes_nothing(weights, tmp_path, capsys):
    gen = write_sample_output(tmp_path / "gen", ITEMS, frames=16)
    write_set(tmp_path / "real", [1, 2, 3], frames=18)
    args = ["evaluate", "--real", str(tmp_path / "real"), "--generated", str(gen), "--out", str(tmp_path / "out"),
            "--inception-weights", str(weights["inception"]), "--i3d-weights", str(weights["i3d"]),
            "--clip-model", str(weights["clip"]), "--train-set", str(tmp_path / "real"), "--fid-frames", "2",
            "--device", "cpu"]
    assert main(args) == 0
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("fid", "fvd", "clipscore", "leakage_rate", "memorisation_rate", "temporal_consistency"):
        assert isinstance(first[key], float), key
    assert first["skipped"] == {} and first["fvd_variant"] == "fvd2048_16f"
    assert first["counts"] == {"real_videos": 3, "generated_videos": 3, "train_videos": 3, "fid_real_frames": 6,
                               "fid_generated_frames": 6, "fvd_real_clips": 3, "fvd_generated_clips": 3,
                               "clip_videos": 3, "clip_frames": 48}
    assert len(first["weights"]["inception"]["sha256"]) == 64 and first["weights"]["i3d"]["format"] == "state_dict"
    assert set(first["per_phase"]) == {"incision", "capsulorhexis"} and first["per_phase"]["incision"]["videos"] == 2
    assert set(first["protocols"]) == {"fid", "fvd", "clipscore", "leakage", "memorisation", "temporal"}
    assert first["memorisation"]["descriptor"] == "inception" and first["memorisation_rate"] == 0.0
    assert first["cache"]["computed"]["decode"] == 9 and first["cache"]["computed"]["i3d"] == 6
    report = (tmp_path / "out" / "report.html").read_text()
    assert "phase_clipscore.png" in report and (tmp_path / "out" / "report" / "temporal_ssim.png").is_file()
    assert "-> " in capsys.readouterr().out

    assert main(args) == 0  # the second run: everything from the cache, not one video decoded
    second = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert second["cache"]["computed"] == {}
    assert second["cache"]["reused"]["i3d"] == 6 and second["cache"]["reused"]["clipscore"] == 3
    for key in ("fid", "fvd", "clipscore", "leakage_rate", "memorisation_rate", "temporal_consistency"):
        assert second[key] == first[key]


def test_missing_weights_skip_only_their_metrics(tmp_path, capsys):
    write_sample_output(tmp_path / "gen", ITEMS[:2], frames=12)
    write_set(tmp_path / "real", [1, 2], frames=12)
    assert main(["evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"),
                 "--out", str(tmp_path / "out"), "--metrics", "fid,fvd,clipscore,temporal,memorisation"]) == 0
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result["fid"] is None and result["fvd"] is None and result["clipscore"] is None
    assert "pt_inception-2015-12-05-6726825d.pth" in result["skipped"]["fid"]
    assert "--inception-weights" in result["skipped"]["fid"] and "github.com/mseitzer" in result["skipped"]["fid"]
    assert "i3d_pretrained_400.pt" in result["skipped"]["fvd"] and "--i3d-weights" in result["skipped"]["fvd"]
    assert "--clip-model" in result["skipped"]["clipscore"] and "--train-set" in result["skipped"]["memorisation"]
    assert 0 < result["temporal_consistency"] <= 1 and result["temporal"]["real"]["psnr"] > 0


def _error(capsys, args) -> str:
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_give_one_line_errors(weights, tmp_path, capsys):
    write_set(tmp_path / "real", [1, 2], frames=12)
    base = ["--real", str(tmp_path / "real"), "--out", str(tmp_path / "out")]
    (tmp_path / "empty").mkdir()
    assert "no videos found" in _error(capsys, [*base, "--generated", str(tmp_path / "empty")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.mp4").write_bytes(bytes(range(256)) * 40)
    assert "a.mp4" in _error(capsys, [*base, "--generated", str(tmp_path / "broken")])
    short = _error(capsys, [*base, "--generated", str(tmp_path / "real"), "--i3d-weights", str(weights["i3d"])])
    assert "12 frames" in short and "--frames" in short
    (tmp_path / "list.csv").write_text("name,text\na,b\n")
    assert "'clip id'" in _error(capsys, [*base, "--generated", str(tmp_path / "list.csv")])
    wrong = _error(capsys, [*base, "--generated", str(tmp_path / "real"), "--inception-weights", str(weights["i3d"])])
    assert "--inception-weights" in wrong and "pt_inception-2015-12-05-6726825d.pth" in wrong
    (tmp_path / "junk.pt").write_text("not weights")
    assert "--i3d-weights" in _error(capsys, [*base, "--generated", str(tmp_path / "real"), "--i3d-weights",
                                              str(tmp_path / "junk.pt")])
    assert "not found" in _error(capsys, [*base, "--generated", str(tmp_path / "real"), "--i3d-weights",
                                          str(tmp_path / "nothing.pt")])
    write_set(tmp_path / "gen", [3], frames=12)  # a sample folder whose manifest lost its columns
    (tmp_path / "gen" / "manifest.csv").write_text("clip id,video\nx,x.mp4\n")
    lost = _error(capsys, [*base, "--generated", str(tmp_path / "gen")])
    assert "manifest.csv is not a sample manifest" in lost and "'prompt'" in lost


def test_inputs_read_manifests_datasets_and_folders(tmp_path):
    write_sample_output(tmp_path / "gen", ITEMS, frames=4)
    videos = read_videos(tmp_path / "gen", "--generated")
    assert [(v.id, v.phase, v.prompt) for v in videos][0] == ("incision_1/0", "incision", "make the incision")
    assert read_videos(tmp_path / "gen" / "manifest.csv", "--generated") == videos
    (tmp_path / "data" / "clips").mkdir(parents=True)
    write_video(tmp_path / "data" / "clips" / "c1.mp4", texture_video(1, frames=4), fps=8)
    (tmp_path / "data" / "instructions.csv").write_text("clip id,instruction,phase\nc1,do it,Capsulorhexis\n")
    [pair] = read_videos(tmp_path / "data", "--real")
    assert (pair.id, pair.prompt, pair.phase) == ("c1", "do it", "Capsulorhexis")
    assert read_videos(tmp_path / "data" / "instructions.csv", "--real") == [pair]
    plain = read_videos(tmp_path / "data" / "clips", "--real")
    assert [v.id for v in plain] == ["c1"] and plain[0].prompt == ""


def test_memorisation_flags_a_reencoded_training_clip_only(tmp_path):
    write_set(tmp_path / "train", [41, 42, 43], frames=16, size=(64, 96))
    (tmp_path / "gen").mkdir()
    frames, _ = read_video(tmp_path / "train" / "v42.mp4")
    write_video(tmp_path / "gen" / "copy.mp4", frames, fps=8, qp=30)  # a lossy re-encode of a training clip
    write_video(tmp_path / "gen" / "new.mp4", texture_video(77, frames=16, size=(64, 96)), fps=8)
    result = evaluate(EvaluateConfig(real=tmp_path / "train", generated=tmp_path / "gen", out=tmp_path / "out",
                                     metrics=["memorisation"], train_set=tmp_path / "train", device="cpu"))
    assert result["memorisation_rate"] == 0.5
    [flagged] = result["memorisation"]["flagged"]
    assert flagged["video"] == "copy" and flagged["nearest"] == "v42" and flagged["ssim"] > 0.9
    new = next(r for r in result["memorisation"]["closest"] if r["video"] == "new")
    assert not new["memorised"] and new["ssim"] < 0.5
    assert "memo_0_train.jpg" in (tmp_path / "out" / "report.html").read_text()


def _with(frames: np.ndarray, draw) -> np.ndarray:
    out = frames.copy()
    for frame in out:
        draw(frame)
    return out


def test_leakage_rate_on_real_cataract_frames(real_data, tmp_path):
    frames, fps = read_video(real_data / "cataract1k_clips" / "cataract1k_iol_frames09835-10095_step5_512x384_6fps.mp4")
    (tmp_path / "gen").mkdir()

    def text(frame):
        cv2.putText(frame, "Dr. J. Example  14.03.2024", (20, 360), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2,
                    cv2.LINE_AA)

    def logo(frame):
        cv2.circle(frame, (470, 40), 22, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.rectangle(frame, (458, 28), (482, 52), (255, 255, 255), 2, cv2.LINE_AA)

    write_video(tmp_path / "gen" / "clean.mp4", frames, fps=fps)
    write_video(tmp_path / "gen" / "text.mp4", _with(frames, text), fps=fps)
    write_video(tmp_path / "gen" / "logo.mp4", _with(frames, logo), fps=fps)
    result = evaluate(EvaluateConfig(real=tmp_path / "gen", generated=tmp_path / "gen", out=tmp_path / "out",
                                     metrics=["leakage"], device="cpu"))
    flagged = {f["video"]: f["reason"] for f in result["leakage"]["flagged"]}
    assert flagged == {"text": "text", "logo": "overlay"}
    assert result["leakage_rate"] == pytest.approx(2 / 3)
    assert "leak_1.jpg" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_is_one_line_and_the_rerun_computes_only_the_rest(signum, tmp_path, capsys, monkeypatch):
    """SIGINT/SIGTERM during feature extraction: exit 130/143 with one line, no half-written cache entry or
    metrics.json; the rerun reuses every entry finished before the signal and gives the uninterrupted result."""
    import ophora.evaluate.run as run

    gen = write_sample_output(tmp_path / "gen", ITEMS, frames=12)
    write_set(tmp_path / "real", [1, 2, 3], frames=12)
    args = ["evaluate", "--real", str(tmp_path / "real"), "--generated", str(gen), "--metrics", "temporal",
            "--device", "cpu", "--out"]
    calls = []
    original = run.temporal_stats

    def signalled(frames):
        calls.append(1)
        if len(calls) == 4:  # three videos are done and cached
            os.kill(os.getpid(), signum)
        return original(frames)

    monkeypatch.setattr(run, "temporal_stats", signalled)
    capsys.readouterr()
    assert main([*args, str(tmp_path / "out")]) == 128 + signum
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"ophora evaluate: stopped by {signal.Signals(signum).name}; rerun the "
                                            "same command to resume")
    assert not (tmp_path / "out" / "metrics.json").exists() and not list((tmp_path / "out").rglob(".*partial*"))
    monkeypatch.undo()
    assert main([*args, str(tmp_path / "out")]) == 0
    resumed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert resumed["cache"]["reused"]["temporal"] == 3 and resumed["cache"]["computed"]["temporal"] == 3
    assert main([*args, str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert resumed["temporal_consistency"] == whole["temporal_consistency"]
