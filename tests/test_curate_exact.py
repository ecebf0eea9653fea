"""Exact clips on real Cataract-1K frames: smart cut boundaries, H.264 yuv420p output, stream choice, truncation."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from ophora.core import smart_cut
from ophora.core.media import cut_segment, cut_segments, probe_video, read_video
from ophora.curate.pipeline import CurateConfig, curate

FPS = 24
NARRATION = ("1\n00:00:00,300 --> 00:00:02,650\nThe hook rotates the intraocular lens in the capsular bag.\n\n"
             "2\n00:00:02,700 --> 00:00:05,230\nThe haptic is dialed into the bag with the hook.\n")


def _real_frames(real_data: Path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    names = sorted((real_data / "cataract1k_iol_sequence").glob("*.jpg"))[:n]
    return [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_CUBIC)
            for p in names]


def _encode(path: Path, frames: list[np.ndarray], codec: str = "libx264", pix_fmt: str = "yuv420p",
            options: dict | None = None, preview: bool = False) -> None:
    """Frames at FPS; x264 with B-frames and a keyframe every 1.5 s unless `options` say otherwise."""
    with av.open(str(path), "w", options={"movflags": "+faststart"} if path.suffix == ".mp4" else {}) as c:
        small = None
        if preview:  # a 160x120 preview as the first stream
            small = c.add_stream("libx264", rate=FPS)
            small.width, small.height, small.pix_fmt = 160, 120, "yuv420p"
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        s.options = options if options is not None else {"x264-params": "keyint=36:min-keyint=36:scenecut=0:bframes=3",
                                                         "preset": "veryfast", "crf": "20"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame.reformat(format=pix_fmt)))
            if small is not None:
                thumb = av.VideoFrame.from_ndarray(cv2.resize(image, (160, 120)), format="rgb24")
                thumb.pts = i
                c.mux(small.encode(thumb.reformat(format="yuv420p")))
        c.mux(s.encode())
        if small is not None:
            c.mux(small.encode())


def _check_exact(clip: Path, source: np.ndarray, start: float, end: float) -> None:
    """The clip holds exactly the source frames shown in [start, end), decoded by PyAV and by OpenCV."""
    first, last = int(np.ceil(start * FPS - 1e-3)), int(np.ceil(end * FPS - 1e-3)) - 1
    frames, fps = read_video(clip)
    assert fps == pytest.approx(FPS, rel=1e-3) and len(frames) == last - first + 1
    for got, want in ((frames[0], source[first]), (frames[-1], source[last])):
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.5
    # neighbours are further away than the re-encoding error: the right frames, not just similar ones
    assert np.abs(frames[0].astype(int) - source[first + 1].astype(int)).mean() > \
        np.abs(frames[0].astype(int) - source[first].astype(int)).mean()
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.name, stream.format.name, c.format.name.split(",")[0]) == ("h264", "yuv420p", "mov")
    capture = cv2.VideoCapture(str(clip))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == len(frames)  # a second decoder (OpenCV's FFmpeg) reads the joined stream whole


@pytest.fixture(scope="module")
def source(real_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exact")
    frames = _real_frames(real_data, 128, (1024, 768))
    _encode(folder / "case.mp4", frames)
    (folder / "case.srt").write_text(NARRATION)
    return folder, read_video(folder / "case.mp4")[0]


@pytest.mark.parametrize("span", [(0.30, 2.65), (1.49, 5.23), (1.5, 3.0), (0.0, 5.3)])
def test_smart_cut_is_exact_between_keyframes(source, tmp_path, span):
    folder, decoded = source
    start, end = cut_segment(folder / "case.mp4", tmp_path / "clip.mp4", *span)
    assert start == pytest.approx(np.ceil(span[0] * FPS - 1e-3) / FPS, abs=1e-6)
    _check_exact(tmp_path / "clip.mp4", decoded, *span)


@pytest.mark.parametrize("spans, fewer", [
    ([(0.30, 2.65), (2.65, 5.23)], True),  # adjacent: the group of pictures at 1.5-3.0 s is decoded once
    ([(0.30, 2.20), (2.70, 5.23)], False),  # a gap inside it (the first clip needs no tail): no more work
    ([(0.30, 1.70), (3.20, 5.23)], False),  # the next clip starts in a later group: decoded on its own
])
def test_adjacent_clips_share_the_decode_of_their_group_of_pictures(source, tmp_path, monkeypatch, spans, fewer):
    folder, decoded = source
    calls = []
    original = smart_cut._decode
    monkeypatch.setattr(smart_cut, "_decode", lambda *a, **k: calls.append(len(a[1])) or original(*a, **k))
    targets = [(tmp_path / f"clip{i}.mp4", a, b) for i, (a, b) in enumerate(spans)]
    alone = [cut_segment(folder / "case.mp4", *target) for target in targets]
    packets_alone = sum(calls)
    calls.clear()
    together = cut_segments(folder / "case.mp4", targets[::-1])[::-1]  # any order in, time order inside
    assert sum(calls) < packets_alone - 18 if fewer else sum(calls) <= packets_alone, (calls, packets_alone)
    assert together == alone
    for target, a, b in targets:
        _check_exact(target, decoded, a, b)


def test_a_clip_that_cannot_be_written_leaves_the_next_one_whole(source, tmp_path):
    folder, decoded = source
    (tmp_path / "a file").write_text("not a folder")
    results = cut_segments(folder / "case.mp4", [(tmp_path / "a file" / "a.mp4", 0.30, 2.65),
                                                 (tmp_path / "b.mp4", 2.65, 5.23)])
    assert isinstance(results[0], OSError) and not isinstance(results[1], Exception)
    _check_exact(tmp_path / "b.mp4", decoded, 2.65, 5.23)


def test_default_curate_keeps_every_clip_exactly(source, tmp_path):
    folder, decoded = source
    curate(CurateConfig(input=folder, out=tmp_path, workers=1))
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert list(manifest["decision"]) == ["keep", "keep"], list(manifest["reason"])  # no keyframe_gap
    for _, row in manifest.iterrows():
        _check_exact(tmp_path / "clips" / f"{row['clip id']}.mp4", decoded, row["start"], row["end"])
    assert manifest["start"].iloc[0] == pytest.approx(0.3, abs=1 / FPS)


@pytest.mark.parametrize("codec, pix_fmt, options", [("mpeg4", "yuv420p", {}), ("libx264", "yuv444p", {})])
def test_other_codecs_and_pixel_formats_become_h264_yuv420p(real_data, tmp_path, codec, pix_fmt, options):
    frames = _real_frames(real_data, 48, (320, 240))
    _encode(tmp_path / "src.mov", frames, codec, pix_fmt, options)
    cut_segment(tmp_path / "src.mov", tmp_path / "clip.mp4", 0.5, 1.5)
    _check_exact(tmp_path / "clip.mp4", read_video(tmp_path / "src.mov")[0], 0.5, 1.5)


def test_the_largest_video_stream_is_used(real_data, tmp_path):
    frames = _real_frames(real_data, 72, (1024, 768))
    _encode(tmp_path / "two.mp4", frames, preview=True)
    assert (probe_video(tmp_path / "two.mp4").width, probe_video(tmp_path / "two.mp4").height) == (1024, 768)
    (tmp_path / "two.srt").write_text("1\n00:00:00,000 --> 00:00:02,900\nThe hook rotates the lens in the bag.\n")
    out = tmp_path / "out"
    curate(CurateConfig(input=tmp_path, out=out, workers=1))
    row = pd.read_parquet(out / "manifest.parquet").iloc[0]
    assert (row["decision"], row["width"]) == ("keep", 1024), row["reason"]
    assert read_video(out / "clips" / f"{row['clip id']}.mp4")[0].shape[1:] == (768, 1024, 3)


def test_a_truncated_file_yields_the_clips_of_its_decodable_part(source, tmp_path):
    folder, decoded = source
    src = tmp_path / "in"
    src.mkdir()
    data = (folder / "case.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(data[: int(len(data) * 0.9)])
    (src / "cut.srt").write_text(NARRATION)
    curate(CurateConfig(input=src, out=tmp_path / "out", workers=1))
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert list(manifest["decision"]) == ["keep", "keep"], list(manifest["reason"])
    last = manifest.iloc[-1]
    assert 4.0 < last["end"] < 5.23
    _check_exact(tmp_path / "out" / "clips" / f"{last['clip id']}.mp4", decoded, last["start"], last["end"])
