"""Filter scores and decisions on hand-made inputs, checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ophora.curate.filters import (FilterConfig, content_decision, frame_kind, longest_cut_free, motion_scores,
                                   non_surgical_scores, resolution_ok, snap_to_keyframe)


def test_longest_cut_free_leaves_out_the_frames_around_a_cut():
    # a cut seen between analysed frames at 3.0 and 3.1 s (frames between were skipped), 10 fps
    assert longest_cut_free(0.0, 10.0, [(3.0, 3.1)], 0.1) == (3.1, 10.0, 1)
    a, b, n = longest_cut_free(0.0, 5.0, [(3.0, 3.1)], 0.1)
    assert (a, n) == (0.0, 1) and b == pytest.approx(3.05)  # keeps the frame at 3.0, not the unseen ones
    assert longest_cut_free(0.0, 5.0, [(6.0, 6.1), (-1.0, 0.0)], 0.1) == (0.0, 5.0, 0)
    assert longest_cut_free(0.0, 9.0, [(2.0, 2.1), (6.0, 6.1)], 0.1)[:2] == (2.1, 6.05)


def test_keyframe_snap_and_resolution():
    assert snap_to_keyframe(2.2, [0.0, 2.0, 4.0]) == 4.0
    assert snap_to_keyframe(2.0, [0.0, 2.0, 4.0]) == 2.0
    assert snap_to_keyframe(4.5, [0.0, 2.0, 4.0]) is None
    config = FilterConfig()
    assert resolution_ok(720, 480, config) and resolution_ok(480, 720, config) and resolution_ok(1920, 1080, config)
    assert not resolution_ok(640, 360, config) and not resolution_ok(719, 480, config)


def test_frame_kinds_and_content_decisions():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:72, :128]
    scene = (127 + 90 * np.sin(x / 6.0) * np.cos(y / 7.0)).astype(np.uint8)  # smooth tissue-like texture
    black = np.full((72, 128), 8, np.uint8)
    slide = np.full((72, 128), 200, np.uint8)
    slide[30:40, 20:100] = 20  # a line of title text
    assert [frame_kind(x) for x in (scene, black, slide)] == ["scene", "black", "blank"]
    config = FilterConfig()
    moving = np.stack([np.roll(scene, 2 * i, axis=1) for i in range(8)])
    scores = {**motion_scores(moving, config), **non_surgical_scores(moving)}
    expected_motion = np.mean([np.abs(moving[i + 1].astype(int) - moving[i]).mean() for i in range(7)])
    assert scores["motion"] == pytest.approx(expected_motion) and scores["frozen_fraction"] == 0.0
    assert content_decision(scores, config) is None
    frozen = np.stack([scene] * 6 + [np.roll(scene, 3, axis=1)] * 2)
    assert motion_scores(frozen, config)["frozen_fraction"] == pytest.approx(6 / 7)
    assert content_decision({**motion_scores(frozen, config), **non_surgical_scores(frozen)}, config) == "static"
    half_black = np.stack([black] * 4 + list(moving[:4]))
    assert content_decision({**motion_scores(half_black, config), **non_surgical_scores(half_black)}, config) == "black"
    wild = np.stack([rng.integers(0, 255, (72, 128), dtype=np.uint8) for _ in range(6)])
    assert content_decision({**motion_scores(wild, config), **non_surgical_scores(wild)}, config) == "extreme_motion"
