"""The procedural surgery world: its ground truth holds in the decoded videos, sidecars, annotations and curate."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ophora.cli import main
from ophora.core.media import read_video
from ophora.curate.refine import make_refiner
from ophora.curate.segment import sentence_spans
from ophora.curate.subtitles import find_sidecar, read_subtitles
from ophora.downstream.annotations import read_annotations
from ophora.synthetic.narrated_videos import EyeScene
from ophora.synthetic.phase_videos import (CATARACT1K_PHASES, SIGNATURES, drift_offset, render_between, render_phase,
                                           render_timeline)
from ophora.synthetic.surgery_world import (NARRATIONS, draw_overlays, make_surgery_world, narration, plan_world,
                                            write_surgery)

REAL_PHASE_NAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / \
    "cataract1k_phase_annotations"
SIZE, FPS = (192, 128), 8.0
WORLD = {"videos": 6, "size": SIZE, "fps": FPS, "overlay_share": 1 / 3, "phases_per_video": (2, 3),
         "seconds": (3.0, 4.0)}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    """Six short surgeries, two with overlays (one caption, one watermark: the first seed whose plan has both)."""
    seed = next(s for s in range(100) if sorted(o.kind for v in plan_world(seed=s, **WORLD) for o in v.overlays)
                == ["caption", "watermark"])
    out = make_surgery_world(tmp_path_factory.mktemp("world"), seed=seed, **WORLD)
    return out, json.loads((out / "ground_truth.json").read_text())


def _scene(truth: dict, stem: str) -> tuple[EyeScene, float]:
    seed = truth["videos"][stem]["seed"]
    return EyeScene(*truth["size"], seed=seed), drift_offset(seed)


# ---------------------------------------------------------------------------------------------- the phases


def test_the_twelve_phases_are_cataract1ks_spelling():
    assert len(CATARACT1K_PHASES) == 12 and set(SIGNATURES) == set(CATARACT1K_PHASES) == set(NARRATIONS)
    if REAL_PHASE_NAMES.is_dir():  # the names as the real annotation files spell them
        real = {line.split(",")[1] for p in REAL_PHASE_NAMES.glob("case_*/*_annotations_phases.csv")
                for line in p.read_text().splitlines()[1:] if line.strip()}
        assert real == set(CATARACT1K_PHASES)


def test_each_phase_shows_its_instrument_colour_and_lens_colour():
    scene = EyeScene(*SIZE, seed=11)
    for phase, sig in SIGNATURES.items():
        frames = [render_phase(scene, phase, 20 + t) for t in np.arange(0, 3, 0.5)]
        instrument = [np.all(np.abs(f.astype(int) - sig.colour) <= 2, axis=-1).mean() for f in frames]
        assert min(instrument) > 0.004, phase  # the instrument is in every frame (> ~100 pixels at 192x128)
        _, c = scene.view(20.0)
        if not sig.iol:  # the lens seen through the pupil: its colour at the pupil's edge, beside any cue
            ring = np.zeros(SIZE[::-1], np.uint8)
            cv2.circle(ring, (round(c[0]), round(c[1])), int(scene.pupil_radius * 0.92), 1, 2)
            lens = np.median(frames[0][ring > 0], axis=0)
            expected = 0.85 * np.array(sig.lens) + 0.15 * np.array([200, 90, 40])  # over the red reflex
            assert np.abs(lens - expected).max() < 25, phase
    idle = render_between(scene, "Incision", "Viscoelastic", 0.5, 20.0)
    for sig in SIGNATURES.values():  # no instrument between phases
        assert np.all(np.abs(idle.astype(int) - sig.colour) <= 2, axis=-1).mean() < 0.001


def test_phases_differ_measurably_and_survive_32x32():
    """Pairwise the phases differ far beyond codec noise; at 32x32 a nearest-centroid colour-histogram classifier
    trained on some scenes names the phase of clips from other scenes."""
    scene = EyeScene(*SIZE, seed=5)
    frames = {p: [render_phase(scene, p, 30 + t).astype(np.float32) for t in np.arange(0, 2, 0.5)]
              for p in CATARACT1K_PHASES}
    diffs = [np.mean([np.abs(x - y).mean() for x, y in zip(frames[a], frames[b])])
             for a, b in itertools.combinations(CATARACT1K_PHASES, 2)]
    assert min(diffs) > 4.0  # mean absolute difference per pixel and channel; H.264 at crf 20 stays ~1-2

    def feature(scene: EyeScene, phase: str, start: float) -> np.ndarray:
        clip = [cv2.resize(render_phase(scene, phase, start + t), (32, 32), interpolation=cv2.INTER_AREA)
                for t in np.arange(0, 2, 0.25)]
        hist = cv2.calcHist(clip, [0, 1, 2], None, [6, 6, 6], [0, 256] * 3).ravel()
        return hist / hist.sum()

    train = {p: np.mean([feature(EyeScene(*SIZE, seed=s), p, 7.0 * s) for s in range(3)], axis=0)
             for p in CATARACT1K_PHASES}
    hits = [min(train, key=lambda q: np.abs(train[q] - feature(EyeScene(*SIZE, seed=s), p, 5.0 * s)).sum()) == p
            for s in (40, 41) for p in CATARACT1K_PHASES]
    assert np.mean(hits) >= 0.75  # chance is 1/12


def test_narrations_vary_and_refine_to_instructions():
    refiner = make_refiner()
    rng = np.random.default_rng(0)
    for phase, templates in NARRATIONS.items():
        assert len(templates) >= 3
        said = {narration(phase, rng) for _ in range(30)}
        assert len(said) >= 4, phase
        instructions = refiner.refine(sorted(said))
        assert all(instructions), (phase, said, instructions)  # each names an action, instrument or anatomy


# ---------------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("videos,share", [(10, 0.3), (7, 0.3), (20, 0.5), (5, 0.0), (4, 1.0)])
def test_overlay_share_and_overlays_cover_whole_spans(videos, share):
    plan = plan_world(videos=videos, overlay_share=share, seed=3)
    assert sum(bool(v.overlays) for v in plan) == round(share * videos)
    for video in plan:
        for overlay in video.overlays:
            covered = [s for s in video.spans if s.overlay]
            assert len(covered) == max(1, len(video.spans) - 1)  # most of the video's length, never all of it
            assert covered[0] in video.spans[:2] and covered[-1] in video.spans[-2:]
            assert all(overlay.start <= s.start and s.end <= overlay.end for s in covered)
            assert all(s.end <= overlay.start or s.start >= overlay.end for s in video.spans if not s.overlay)


def test_phase_runs_follow_surgical_order_and_show_every_phase_evenly():
    plan = plan_world(videos=24, seed=1)
    shown = Counter(s.phase for v in plan for s in v.spans)
    assert set(shown) == set(CATARACT1K_PHASES) and max(shown.values()) <= 2 * min(shown.values())
    for video in plan:
        order = [CATARACT1K_PHASES.index(s.phase) for s in video.spans]
        assert order == list(range(order[0], order[0] + len(order)))
        assert all(a.end < b.start for a, b in zip(video.spans, video.spans[1:]))


# ---------------------------------------------------------------------------------------------- the files


def test_decoded_videos_show_the_declared_phase_at_the_declared_times(world):
    out, truth = world
    assert len(truth["videos"]) == 6
    for stem, video in truth["videos"].items():
        frames, fps = read_video(out / video["video"])
        assert frames.shape == (video["frames"], SIZE[1], SIZE[0], 3) and fps == pytest.approx(FPS)
        scene, offset = _scene(truth, stem)
        for span in video["phases"]:
            t = (span["start"] + span["end"]) / 2
            i = round(t * FPS)
            decoded = frames[i].astype(np.float32)
            errors = {p: np.abs(decoded - render_phase(scene, p, offset + i / FPS)).mean() for p in CATARACT1K_PHASES}
            best = min(errors, key=errors.get)
            assert best == span["phase"], (stem, span, errors)
            assert sorted(errors.values())[1] > 1.5 * errors[best]  # the next phase is far beyond the codec's error


def test_overlays_are_where_declared_and_nowhere_else(world, tmp_path):
    """Each video against its twin rendered and encoded the same way without overlays."""
    out, truth = world
    plan = {v.stem: v for v in plan_world(seed=truth["seed"], **WORLD)}
    for stem, video in truth["videos"].items():
        frames, _ = read_video(out / video["video"])
        clean, _ = read_video(write_surgery(plan[stem], tmp_path, SIZE, FPS, overlays=False)[0])
        for i in range(len(frames)):
            t = i / FPS
            diff = np.abs(frames[i].astype(np.float32) - clean[i]).max(axis=-1)
            free = np.ones(diff.shape, np.float32)  # 1: no overlay shown at t may change this pixel
            for o in video["overlays"]:
                x0, y0, x1, y1 = o["box"]
                if o["start"] <= t < o["end"]:
                    assert diff[y0:y1, x0:x1].mean() > 40, (stem, t, o["kind"])  # measured: 80-100 grey levels
                    reach = 4  # H.264 changes pixels beside a changed block: 2x2 chroma, deblocking up to 3 pixels
                    free[max(y0 - reach, 0):y1 + reach, max(x0 - reach, 0):x1 + reach] = 0
                else:  # the codec's own difference, and the ghost in the frame after an overlay goes
                    assert diff[y0:y1, x0:x1].mean() < 8, (stem, t, o["kind"])
            # Elsewhere only the codec's noise: x264 spends its bits differently once a dark box is in the frame, so
            # single pixels on the veins move by up to ~65 grey levels, but no area does (measured: means of 16x16
            # areas up to 14, against 80 and more inside an overlay's box while it is shown)
            counted = cv2.boxFilter(free, -1, (16, 16), normalize=False)
            moved = cv2.boxFilter(diff * free, -1, (16, 16), normalize=False) / np.maximum(counted, 1)
            assert moved[counted >= 128].max(initial=0) < 25, (stem, t)


def test_overlay_boxes_hold_every_changed_pixel():
    for video in plan_world(videos=10, overlay_share=1.0, seed=2):
        scene = EyeScene(*SIZE, seed=video.seed)
        overlay = video.overlays[0]
        assert overlay.text and bool(overlay.corner) == (overlay.kind == "watermark")  # a caption or a channel name
        t = (overlay.start + overlay.end) / 2
        clean = render_timeline(scene, [(s.start, s.end, s.phase) for s in video.spans], t)
        drawn = clean.copy()
        draw_overlays(video, drawn, t)
        changed = np.any(drawn != clean, axis=-1)
        x0, y0, x1, y1 = overlay.box
        assert changed.sum() > 0.1 * (x1 - x0) * (y1 - y0)
        changed[y0:y1, x0:x1] = False
        assert not changed.any(), overlay


@pytest.mark.parametrize("sidecar", ["srt", "vtt", "json"])
def test_sidecars_give_curate_the_declared_spans(tmp_path, sidecar):
    out = make_surgery_world(tmp_path, videos=1, size=(64, 64), fps=4.0, phases_per_video=(3, 3), sidecar=sidecar)
    truth = json.loads((out / "ground_truth.json").read_text())["videos"]["case_1"]
    path = find_sidecar(out / truth["video"])
    assert path == out / truth["sidecar"]
    spans = sentence_spans(read_subtitles(path))
    assert [(round(s.start, 3), round(s.end, 3), s.text) for s in spans] == \
        [(s["start"], s["end"], s["narration"]) for s in truth["phases"]]


def test_annotations_read_back_to_the_declared_spans(world):
    out, truth = world
    table = read_annotations([out / "annotations"])
    assert not table.refused
    got = sorted((s.video, s.phase, round(s.start, 3), round(s.end, 3)) for s in table.segments)
    frame = 1 / truth["fps"]  # Cataract-1K rows end at their last frame
    want = sorted((stem, s["phase"], round(s["start"], 3), round(s["end"] - frame, 3))
                  for stem, v in truth["videos"].items() for s in v["phases"])
    assert got == want


def test_curate_keeps_every_phase_clip_and_flags_exactly_the_overlaid_ones(world, tmp_path):
    out, truth = world
    code = main(["curate", str(out / "videos"), "--out", str(tmp_path / "cur"), "--workers", "2",
                 *truth["curate_flags"]])
    assert code == 0
    manifest = pd.read_parquet(tmp_path / "cur" / "manifest.parquet").set_index("clip id")
    expected = {f"{stem}_{i}": span for stem, v in truth["videos"].items() for i, span in enumerate(v["phases"])}
    assert sorted(manifest.index) == sorted(expected)
    for clip_id, span in expected.items():
        row = manifest.loc[clip_id]
        assert row["decision"] == "keep", (clip_id, row["reason"])
        assert abs(row["start"] - span["start"]) < 0.2 and abs(row["end"] - span["end"]) < 0.2
        assert bool(row["privacy_reason"]) == bool(span["overlay"]), (clip_id, span["overlay"], row["privacy_reason"])
        assert row["instruction"]


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert main(["make-surgery-world", str(tmp_path / "w"), "--overlay-share", "1.5"]) == 2
    assert "overlay_share must be between 0 and 1" in capsys.readouterr().err
    assert main(["make-surgery-world", str(tmp_path / "w"), "--width", "101"]) == 2
    assert "size must be even" in capsys.readouterr().err


@pytest.mark.slow
def test_a_small_video_network_learns_the_twelve_phases_at_32x32(tmp_path):
    """MViTv2-tiny on 32x32 clips of 24 surgeries (about 6 minutes on 2 CPU cores; measured: test segment top-1 1.0,
    clip top-1 0.96 on 5 held-out videos); chance is 1/12."""
    world = make_surgery_world(tmp_path / "world", videos=24, phases_per_video=(4, 6))
    code = main(["downstream", "--annotations", str(world / "annotations"), "--videos", str(world / "videos"),
                 "--out", str(tmp_path / "out"), "--model", "mvit_v2_tiny", "--clip-frames", "8", "--clip-size", "32",
                 "--clip-fps", "4", "--clips-per-segment", "2", "--epochs", "12", "--batch-size", "8", "--lr", "2e-3",
                 "--workers", "0"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(result["phases"]) == 12
    assert result["runs"]["real"]["test"]["segment"]["top1"] >= 0.5


def test_phase_sheet_shows_every_phase(tmp_path):
    from ophora.synthetic.phase_videos import phase_sheet

    image = cv2.imread(str(phase_sheet(tmp_path / "sheet.png", size=(96, 64), columns=4)))
    assert image.shape == (3 * (64 + 22), 4 * 96, 3)
    tiles = [image[r * 86:r * 86 + 64, c * 96:(c + 1) * 96] for r in range(3) for c in range(4)]
    assert len(SIGNATURES) == len(tiles) == 12
    # every phase looks different from every other one
    assert min(np.abs(a.astype(int) - b).mean() for i, a in enumerate(tiles) for b in tiles[i + 1:]) > 3
