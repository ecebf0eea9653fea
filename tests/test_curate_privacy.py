"""Privacy filter: PP-OCRv4 text detection and the static-overlay check on real Cataract-1K footage; VLM backend."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pandas as pd
import pytest

from ophora.curate.pipeline import CurateConfig, curate
from ophora.core.privacy import PrivacyConfig, overlay_score, privacy_reason, privacy_scores, vlm_flag
from ophora.core.errors import EndpointError
from ophora.core.media import VideoWriter, read_video


def _upscaled(src, dst, draw=None) -> float:
    """Write the clip at 2x (1024x768, passes 720x480), optionally drawing on every frame; returns seconds."""
    frames, fps = read_video(src)
    with VideoWriter(dst, fps, 1024, 768, crf=16, preset="veryfast", keyint=6) as writer:
        for frame in frames:
            big = cv2.resize(frame, (1024, 768), interpolation=cv2.INTER_CUBIC)
            if draw:
                draw(big)
            writer.write(big)
    return len(frames) / fps


def _text(frame: np.ndarray) -> None:
    cv2.putText(frame, "Dr. J. Example  14.03.2024", (40, 720), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (255, 255, 255), 2, cv2.LINE_AA)


def _logo(frame: np.ndarray) -> None:
    cv2.circle(frame, (950, 70), 34, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.rectangle(frame, (932, 52), (968, 88), (255, 255, 255), 2, cv2.LINE_AA)


@pytest.fixture(scope="module")
def real_curated(real_data, tmp_path_factory):
    clip = real_data / "cataract1k_clips" / "cataract1k_iol_frames09835-10095_step5_512x384_6fps.mp4"
    src = tmp_path_factory.mktemp("real")
    for name, draw in (("clean", None), ("text", _text), ("logo", _logo)):
        seconds = _upscaled(clip, src / f"{name}.mp4", draw)
        (src / f"{name}.srt").write_text(f"1\n00:00:00,000 --> 00:00:0{int(seconds)},000\n"
                                         "The intraocular lens is positioned in the capsular bag with a hook.\n")
    out = tmp_path_factory.mktemp("real-out")
    curate(CurateConfig(input=src, out=out, workers=1))
    return pd.read_parquet(out / "manifest.parquet").set_index("source")


def test_clean_real_clip_passes_the_privacy_filter(real_curated):
    row = real_curated.loc["clean.mp4"]
    assert row["decision"] == "keep", row["reason"]
    assert row["privacy_reason"] == "" and row["text_boxes"] == 0 and row["overlay_area"] == 0


def test_real_clip_with_burned_in_text_is_flagged(real_curated):
    row = real_curated.loc["text.mp4"]
    assert row["decision"] == "keep" and row["privacy_reason"] == "text" and row["text_area"] > 0.005


def test_real_clip_with_a_logo_is_flagged(real_curated):
    row = real_curated.loc["logo.mp4"]
    assert row["decision"] == "keep" and row["privacy_reason"] == "overlay" and row["overlay_area"] > 0


def test_overlay_check_needs_a_moving_view():
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 255, (1, 90, 160), dtype=np.uint8), 10, axis=0)
    assert overlay_score(still, PrivacyConfig()) == 0.0  # a frozen clip is all "static": not an overlay
    moving = np.stack([np.roll(cv2.GaussianBlur(rng.integers(0, 255, (90, 160), dtype=np.uint8), (0, 0), 2) * 3, i * 2, 1)
                       for i in range(12)])
    assert overlay_score(moving, PrivacyConfig()) == 0.0
    marked = moving.copy()
    for frame in marked:  # a small ring-and-cross logo that stays put
        cv2.circle(frame, (140, 16), 9, 255, 2)
        cv2.line(frame, (134, 16), (146, 16), 255, 2)
        cv2.line(frame, (140, 10), (140, 22), 255, 2)
    assert overlay_score(marked, PrivacyConfig()) > 0


class _Chat(BaseHTTPRequestHandler):
    answers: list = []
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.seen.append((body, self.headers.get("Authorization")))
        kind = _Chat.answers.pop(0) if _Chat.answers else "no"
        if kind == "sleep":
            time.sleep(1.0)
            kind = "no"
        if kind == "500":
            self.send_response(500)
            self.end_headers()
            return
        payload = b"not json" if kind == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": kind}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Chat.answers, _Chat.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_vlm_backend_answers_errors_timeouts_and_garbage(chat_server, monkeypatch):
    monkeypatch.setenv("OPHORA_LLM_API_KEY", "sk-test")
    config = PrivacyConfig(backend="vlm", vlm_url=chat_server, vlm_model="qwen-vl", vlm_timeout=0.5, vlm_retries=3)
    frames = [np.zeros((48, 64, 3), np.uint8)] * 2
    _Chat.answers = ["Yes."]
    assert vlm_flag(frames, config) == 1.0
    body, auth = _Chat.seen[-1]
    assert body["model"] == "qwen-vl" and auth == "Bearer sk-test"
    assert [c["type"] for c in body["messages"][0]["content"]] == ["text", "image_url", "image_url"]
    _Chat.answers = ["500", "garbage", "maybe", "no"]
    with pytest.raises(EndpointError, match="failed after 3 tries"):
        vlm_flag(frames, config)
    _Chat.answers = ["sleep", "No"]
    assert vlm_flag(frames, config) == 0.0
    scores = privacy_scores(frames, np.zeros((0, 1, 1), np.uint8), config)
    assert privacy_reason(scores, config) == ""
    with pytest.raises(Exception, match="vlm-url"):
        PrivacyConfig(backend="vlm").check()


# ---------------------------------------------------------------------------------------------- real-frame set

def test_real_frame_overlays_of_one_second_are_caught_and_bubbles_and_glints_are_not(real_data, tmp_path):
    """A few clips of the real-frame privacy set (benchmarks/privacy_real.py measures all of it): text shown for
    one second, small corner text and semi-transparent text are flagged; clean twins with a row of air bubbles or
    specular glints are not."""
    from ophora.synthetic.privacy_clips import PrivacyClip, write_privacy_clips

    clips = [PrivacyClip("subtitle_1s", "case5316_06.png", 11, "subtitle", "bottom", "white", 26, 1.0, 1.2, seconds=3),
             PrivacyClip("corner", "sequence:30", 12, "corner_small", "top_right", "yellow", 13, 3.0, seconds=3),
             PrivacyClip("translucent", "case_53153_05.png", 13, "translucent", "top", "white", 30, 2.0, 0.5, seconds=3),
             PrivacyClip("clean_bubbles", "case5316_06.png", 11, extra="bubbles", seconds=3),
             PrivacyClip("clean_glints", "sequence:30", 12, extra="glints", seconds=3)]
    write_privacy_clips(real_data, tmp_path / "src", clips)
    curate(CurateConfig(input=tmp_path / "src", out=tmp_path / "out", workers=1))
    rows = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("source")
    for clip in clips:
        row = rows.loc[f"{clip.name}.mp4"]
        assert row["decision"] == "keep", (clip.name, row["reason"])
        assert (row["privacy_reason"] != "") == clip.flagged, (clip.name, row["privacy_reason"], row["text_boxes"])


def test_detector_frames_are_spread_over_the_whole_clip():
    from ophora.curate.filters import FilterConfig, SourceScan

    scan = SourceScan(width=64, height=48)
    scan.ocr_times = [i * 1.0 for i in range(40)]
    scan.ocr_frames = [cv2.imencode(".png", np.full((8, 8, 3), i, np.uint8))[1].tobytes() for i in range(40)]
    picked = scan.ocr_stack(0.0, 40.0, PrivacyConfig().frames)
    assert len(picked) == 30 and picked[0][0, 0, 0] == 0 and picked[-1][0, 0, 0] == 39  # first and last second
    assert len(scan.ocr_stack(3.0, 9.0, PrivacyConfig().frames)) == 6  # one per second of a 6-s clip
    assert FilterConfig().ocr_interval == 1.0


def test_dark_text_at_the_frame_edge_is_found_by_the_margin_pass(real_data):
    """Black text on the dark drape at the frame's edge: the whole-frame pass at 640 px misses it, the contrast-
    normalised, enlarged margin bands find it; the clean twin's margins hold no text line."""
    from ophora.core.privacy import margin_boxes, text_detector
    from ophora.synthetic.privacy_clips import PrivacyClip, render_clip

    clip = PrivacyClip("dark", "case_53153_04.png", 21, "timestamp", "top_right", "black", 26, 2.0, seconds=2)
    clean = PrivacyClip("clean", "case_53153_04.png", 21, seconds=2)
    config = PrivacyConfig()

    def frames(c):
        return [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
                for f in render_clip(real_data, c)[::25]]

    dark, plain = frames(clip), frames(clean)
    engine = text_detector(config.threads, config.ocr_long_side)
    assert not any(engine(f, use_det=True, use_cls=False, use_rec=False)[0] for f in dark)  # the whole frame: nothing
    found = [b for f in dark for b in margin_boxes(f, config)]
    assert found and all(cv2.boundingRect(b.astype(np.int32))[1] < 0.15 * 480 for b in found)  # in the top band
    assert privacy_reason(privacy_scores(dark, np.zeros((0, 1, 1), np.uint8), config), config) == "text"
    assert privacy_reason(privacy_scores(plain, np.zeros((0, 1, 1), np.uint8), config), config) == ""


def _detector_frames(real, clip) -> list[np.ndarray]:
    """The clip's frames once a second at the detector's 640x480, BGR, as curate's scan offers them."""
    from ophora.synthetic.privacy_clips import FPS, render_clip

    return [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
            for f in render_clip(real, clip)[::int(FPS)]]


def test_static_check_finds_a_faint_watermark_on_a_moving_view(real_data):
    """A large red watermark at alpha 0.3 over the red reflex (after H.264 and the 640-px detector frame no single
    frame shows the detector a line: benchmarks/privacy_real.py): the temporal median of the high-pass frames
    shows it; the clean twin and a still view (everything static) give no line."""
    from ophora.core.privacy import static_boxes
    from ophora.synthetic.privacy_clips import PrivacyClip

    clip = PrivacyClip("faint", "case_53153_07.png", 430406547, "watermark", "centre", "red", 42)
    config = PrivacyConfig()
    frames = _detector_frames(real_data, clip)
    found = static_boxes(frames, config)
    assert found and all(abs(b[:, 1].mean() - 240) < 40 for b in found)  # at the frame's centre, where it is
    scores = privacy_scores(frames, np.zeros((0, 1, 1), np.uint8), config)
    assert scores["overlay_area"] > 0.005 and privacy_reason({**scores, "text_boxes": 0.0}, config) == "overlay"
    assert static_boxes(_detector_frames(real_data, PrivacyClip("clean", clip.view, clip.motion_seed)), config) == []
    rng = np.random.default_rng(0)  # a still view: the same frame under sensor noise; all of it is static
    still = [np.clip(frames[0] + rng.normal(0, 2, frames[0].shape), 0, 255).astype(np.uint8) for _ in frames]
    assert static_boxes(still, config) == []
    assert static_boxes(frames[:config.static_min_frames - 1], config) == []  # too few frames to tell


def _scanned(real, clips, folder):
    """Write the clips (H.264) and run curate's decode pass over each, keeping the source-resolution bands."""
    from ophora.curate.filters import FilterConfig, scan_source
    from ophora.curate.segment import Span
    from ophora.synthetic.privacy_clips import write_privacy_clips

    write_privacy_clips(real, folder, clips)
    config = PrivacyConfig()
    return [scan_source(folder / f"{c.name}.mp4", [Span(0.0, c.seconds, "x")], FilterConfig(), 0,
                        config.ocr_long_side, config.margin_band, config.margin_long_side) for c in clips]


def test_scan_keeps_each_detector_frames_bands_at_source_resolution(real_data, tmp_path):
    """curate's one decode pass stores, beside each 640-px detector frame, its top and bottom bands at the
    source's 1024x768, matching a decode of the file at that time."""
    from ophora.core.privacy import band_strip
    from ophora.synthetic.privacy_clips import PrivacyClip

    config = PrivacyConfig()
    scan, = _scanned(real_data, [PrivacyClip("c", "sequence:30", 5, "timestamp", "top_left", seconds=3)], tmp_path)
    strips = scan.ocr_stack(0.0, 3.0, config.frames, strips=True)
    frames = scan.ocr_stack(0.0, 3.0, config.frames)
    assert len(strips) == len(frames) == 3 and frames[0].shape == (480, 640, 3)
    assert all(s.shape == (2 * round(0.15 * 768), 1024, 3) for s in strips)
    decoded, fps = read_video(tmp_path / "c.mp4")
    for t, strip in zip(scan.ocr_times, strips):
        reference = band_strip(cv2.cvtColor(decoded[round(t * fps)], cv2.COLOR_RGB2BGR), config.margin_band)
        assert np.abs(strip.astype(np.int16) - reference).mean() < 3  # the same pixels, up to JPEG


def test_small_dark_corner_text_is_found_in_the_source_resolution_bands(real_data, tmp_path):
    """12-px black text on the dark drape, through H.264 and curate's scan: illegible in every 640-px detector
    frame (their bands enlarged included), found in the same bands at the source's 1024 px (in 3-4 of its 6
    frames); the clean twin's bands hold no line. The static check is off here: it would see the text too."""
    from ophora.core.privacy import margin_boxes
    from ophora.synthetic.privacy_clips import PrivacyClip

    config = replace(PrivacyConfig(), overlay=False)
    clip = PrivacyClip("small", "case_53153_04.png", 160352430, "corner_small", "bottom_right", "black", 12)
    clean = PrivacyClip("clean", clip.view, clip.motion_seed)
    no_greys = np.zeros((0, 1, 1), np.uint8)
    for scan, c in zip(_scanned(real_data, [clip, clean], tmp_path), (clip, clean)):
        frames, strips = scan.ocr_stack(0.0, 6.0, config.frames), scan.ocr_stack(0.0, 6.0, config.frames, True)
        assert privacy_scores(frames, no_greys, config)["text_boxes"] == 0
        assert privacy_reason(privacy_scores(frames, no_greys, config, strips), config) == ("text" if c.kind else "")
    boxes = [b for f, s in zip(frames, strips) for b in margin_boxes(f, config, s)]
    assert boxes == []  # the clean twin's
