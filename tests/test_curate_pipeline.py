"""`ophora curate` end to end on the project's sample videos (known ground truth) and on bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from ophora.curate.pipeline import CurateConfig, curate
from ophora.synthetic.narrated_videos import EyeScene
from ophora.core.media import VideoWriter, read_video


@pytest.fixture(scope="module")
def samples(narrated_videos) -> Path:
    return narrated_videos


@pytest.fixture(scope="module")
def curated(samples, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("curated")
    return out, curate(CurateConfig(input=samples, out=out, workers=2))


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_decisions_match_ground_truth(samples, curated):
    out, summary = curated
    truth = json.loads((samples / "ground_truth.json").read_text())
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("clip id")
    assert sorted(manifest.index) == sorted(truth["clips"])
    for clip_id, want in truth["clips"].items():
        row = manifest.loc[clip_id]
        assert (row["decision"], row["reason"]) == (want["decision"], want["reason"]), clip_id
        if want["decision"] == "keep":
            assert row["privacy_reason"] == want["privacy"], clip_id
    skipped = pd.read_csv(out / "skipped_sources.csv")
    assert dict(zip(skipped["source"], skipped["reason"])) == truth["skipped_sources"]
    # the scene cut at 22 s inside 20-26 s: trimmed to the longest cut-free part
    cut = manifest.loc["cataract_a_4"]
    assert cut["cuts_inside"] == 1 and cut["trimmed"] and cut["start"] == pytest.approx(22.0, abs=0.07)
    assert summary["clips"]["kept"] == sum(v["decision"] == "keep" for v in truth["clips"].values())


def test_output_layout_and_clip_files(curated):
    out, summary = curated
    manifest = pd.read_parquet(out / "manifest.parquet")
    kept = manifest[manifest["decision"] == "keep"]
    rows = _csv(out / "instructions.csv")
    assert rows[0] == ["clip id", "instruction"]
    assert [r[0] for r in rows[1:]] == list(kept["clip id"]) and all(r[1] for r in rows[1:])
    private = _csv(out / "privacy_preserved.csv")
    assert private[0] == ["clip id", "instruction"]
    assert {r[0] for r in private[1:]} == set(kept[kept["privacy_reason"] == ""]["clip id"])
    for _, row in kept.iterrows():
        frames, fps = read_video(out / "clips" / f"{row['clip id']}.mp4")
        assert frames.shape[1:] == (480, 854, 3) and fps == pytest.approx(15)
        assert len(frames) == pytest.approx(row["duration"] * 15, abs=1)
    assert set(manifest.columns) >= {"source", "start", "end", "width", "height", "fps", "narration", "instruction",
                                     "decision", "reason", "privacy_reason", "motion", "text_area", "overlay_area"}
    assert summary["clips"]["candidates"] == len(manifest)
    report = (out / "report.html").read_text()
    assert "dropped: static" in report and "clips/" in report
    assert json.loads((out / "summary.json").read_text())["versions"]["ophora"]


def test_clip_content_matches_source(samples, curated):
    out, _ = curated
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("clip id")
    row = manifest.loc["cataract_c_1"]
    clip, _ = read_video(out / "clips" / "cataract_c_1.mp4")
    source, fps = read_video(samples / "cataract_c.mp4")
    first = int(round(row["start"] * fps))
    assert np.abs(clip[0].astype(int) - source[first].astype(int)).mean() < 1.0  # stream copy: same frames


def _vfr_video(path: Path) -> None:
    """8 s of the sample eye with irregular frame spacing (variable frame rate), a keyframe every 0.5 s."""
    scene = EyeScene(720, 480, seed=3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 720, 480, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"x264-params": "keyint=15:min-keyint=15:scenecut=0"}
        t = 0
        while t < 8000:
            rgb = cv2.cvtColor(scene.frame(t / 1000), cv2.COLOR_BGR2RGB)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
            t += 33 if (t // 1000) % 2 else 50
        for p in s.encode():
            c.mux(p)


def _srt(path: Path, cues: list[tuple[float, float, str]], encoding: str = "utf-8", newline: str = "\n") -> None:
    def ts(x):
        return f"00:00:{int(x):02d},{int(round(x % 1 * 1000)):03d}"
    text = newline.join(f"{i + 1}{newline}{ts(a)} --> {ts(b)}{newline}{t}{newline}" for i, (a, b, t) in enumerate(cues))
    path.write_bytes(text.encode(encoding))


def test_bad_input_is_skipped_or_handled_with_reasons(samples, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    narration = [(0, 4, "The keratome creates the main incision."), (4, 8, "Viscoelastic fills the chamber.")]
    (src / "empty.mp4").touch()
    # fixed garbage: about 1 in 150 random byte strings opens as an "lrc" lyrics file (no video stream)
    (src / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = (samples / "cataract_c.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    with av.open(str(src / "audio_only.mp4"), "w") as c:
        s = c.add_stream("aac", rate=44100)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 44100, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    _vfr_video(src / "vfr.mp4")
    # latin-1 + CRLF subtitles with an overlapping cue and one beyond the end of the video
    _srt(src / "vfr.srt", narration + [(7, 9, "La capsule est ouverte."), (30, 34, "Too late.")], "latin-1", "\r\n")
    with VideoWriter(src / "portrait.mp4", 15, 480, 720, preset="ultrafast") as w:
        for i in range(90):
            w.write(np.roll(np.tile(np.linspace(0, 255, 480, dtype=np.uint8)[None, :, None], (720, 1, 3)), i * 3, 1))
    for name in ("empty", "corrupt", "truncated", "audio_only", "portrait"):
        _srt(src / f"{name}.srt", narration)
    (src / "bad_subs.mp4").write_bytes((samples / "cataract_c.mp4").read_bytes())
    (src / "bad_subs.json").write_text("{not json")

    summary = curate(CurateConfig(input=src, out=tmp_path / "out", workers=1))
    skipped = pd.read_csv(tmp_path / "out" / "skipped_sources.csv").set_index("source")
    assert skipped.loc["empty.mp4", "reason"] == "empty_file"
    assert skipped.loc["corrupt.mp4", "reason"] == "unreadable"
    assert skipped.loc["audio_only.mp4", "reason"] == "no_video_stream"
    assert skipped.loc["bad_subs.mp4", "reason"] == "bad_subtitles"
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("clip id")
    if "truncated.mp4" not in skipped.index:  # a decodable head: clips end where the decodable video ends
        rows = manifest[manifest["source"] == "truncated.mp4"]
        assert len(rows) and (rows[rows["decision"] == "keep"]["duration"] >= 2.0).all()
        assert (rows[rows["decision"] != "keep"]["reason"] != "").all()
    vfr = manifest[manifest["source"] == "vfr.mp4"]
    assert list(vfr.index) == ["vfr_0", "vfr_1"]  # the cue past the end is gone, the overlap cut
    assert "La capsule est ouverte." in vfr.loc["vfr_1", "narration"]
    assert (vfr["decision"] == "keep").all()
    clip, _ = read_video(tmp_path / "out" / "clips" / "vfr_0.mp4")
    assert clip.shape[1:] == (480, 720, 3)
    portrait = manifest[manifest["source"] == "portrait.mp4"]
    assert (portrait["width"] == 480).all() and (portrait["height"] == 720).all()
    assert (portrait["reason"] != "resolution").all()  # 480x720 portrait meets 720x480
    assert summary["sources"]["found"] == 7


def test_asr_missing_is_recorded_as_skip(samples, tmp_path):
    if importlib.util.find_spec("faster_whisper") is not None:
        pytest.skip("faster-whisper is installed here; this test covers its absence")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(samples / "no_narration_e.mp4", src)
    curate(CurateConfig(input=src, out=tmp_path / "out", workers=1, asr="faster-whisper", asr_model="/no/model"))
    skipped = pd.read_csv(tmp_path / "out" / "skipped_sources.csv")
    assert skipped["reason"].tolist() == ["asr_unavailable"]
    assert "faster-whisper is not installed" in skipped["detail"][0]


def test_resume_after_kill_gives_the_same_outputs(samples, curated, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ophora", "curate", str(samples), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / ".work").glob("*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / ".work").glob("*.json")))
    assert 1 <= done < 4, "the kill should land between sources"
    assert not (out / "manifest.parquet").exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    full = curated[0]
    for name in ("instructions.csv", "privacy_preserved.csv"):
        assert (out / name).read_text() == (full / name).read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(full / "manifest.parquet"))
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(p.name for p in (full / "clips").iterdir())
    for clip in (full / "clips").iterdir():
        assert (out / "clips" / clip.name).read_bytes() == clip.read_bytes()
    assert not list(out.rglob(".*partial*"))


def test_cli_make_narrated_videos_and_curate(tmp_path):
    from ophora.cli import main

    assert main(["curate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["curate", str(tmp_path), "--out", str(tmp_path / "o"), "--min-seconds", "20"]) == 2


def _rotate_90_clockwise_on_display(path: Path) -> None:
    """Set the track's display matrix to a 90 degree turn, as phones do (patches the tkhd box in place)."""
    import struct

    data = bytearray(path.read_bytes())
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    data[at:at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def test_rotated_video_is_turned_upright(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    scene = EyeScene(854, 480, seed=5)
    with VideoWriter(src / "phone.mp4", 15, 854, 480, preset="ultrafast", keyint=15) as writer:
        for i in range(90):
            frame = cv2.cvtColor(scene.frame(i / 15), cv2.COLOR_BGR2RGB)
            frame[:60, :60] = 255  # a marker in the stored top-left corner
            writer.write(frame)
    _rotate_90_clockwise_on_display(src / "phone.mp4")
    _srt(src / "phone.srt", [(0, 5, "The surgeon rotates the nucleus with the chopper.")])
    curate(CurateConfig(input=src, out=tmp_path / "out", workers=1))
    row = pd.read_parquet(tmp_path / "out" / "manifest.parquet").iloc[0]
    assert (row["width"], row["height"], row["decision"]) == (480, 854, "keep")
    clip, _ = read_video(tmp_path / "out" / "clips" / "phone_0.mp4")
    assert clip.shape[1:] == (854, 480, 3)
    assert clip[0, 5:55, -55:-5].mean() > 240 and clip[0, 5:55, 5:55].mean() < 240  # marker now top-right


def test_asr_model_that_fails_to_load_or_transcribes(samples, tmp_path, monkeypatch):
    """Our handling of faster-whisper's API (a stand-in module: no Whisper weights can be had here)."""
    import types

    from ophora.curate import pipeline

    class Model:
        def __init__(self, name):
            if name != "tiny-ok":
                raise RuntimeError(f"Unable to open file 'model.bin' in model '{name}'")

        def transcribe(self, path):
            segment = types.SimpleNamespace
            return iter([segment(start=0.0, end=3.0, text=" The surgeon marks the cornea."),
                         segment(start=3.0, end=6.0, text=" The blade enters the chamber.")]), None

    monkeypatch.setitem(sys.modules, "faster_whisper", types.SimpleNamespace(WhisperModel=Model))
    monkeypatch.setattr(pipeline, "_ASR_MODELS", {})
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(samples / "no_narration_e.mp4", src)
    curate(CurateConfig(input=src, out=tmp_path / "bad", workers=1, asr="faster-whisper", asr_model="/no/model"))
    skipped = pd.read_csv(tmp_path / "bad" / "skipped_sources.csv")
    assert skipped["reason"].tolist() == ["asr_unavailable"] and "cannot load ASR model" in skipped["detail"][0]
    curate(CurateConfig(input=src, out=tmp_path / "ok", workers=1, asr="faster-whisper", asr_model="tiny-ok"))
    manifest = pd.read_parquet(tmp_path / "ok" / "manifest.parquet")
    assert manifest["narration"].tolist() == ["The surgeon marks the cornea.", "The blade enters the chamber."]
    assert manifest["decision"].tolist() == ["keep", "keep"]
