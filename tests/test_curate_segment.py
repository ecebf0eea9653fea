"""Narration cues -> sentence spans -> clip spans."""

from __future__ import annotations

import pytest

from ophora.curate.segment import Span, clip_spans, sentence_spans
from ophora.curate.subtitles import Cue


def test_cues_join_until_a_sentence_ends_or_a_pause():
    cues = [Cue(0, 2, "We now make"), Cue(2, 4, "the incision."), Cue(4, 6, "Then we"), Cue(9, 11, "inject dye.")]
    spans = sentence_spans(cues)
    assert [(s.start, s.end, s.text) for s in spans] == [
        (0, 4, "We now make the incision."), (4, 6, "Then we"), (9, 11, "inject dye.")]


def test_short_spans_merge_long_ones_split_at_cues_and_all_are_clamped():
    cues = [Cue(i * 2.5, (i + 1) * 2.5, f"w{i}") for i in range(8)]  # 20 s of rolling captions, no punctuation
    spans = clip_spans(sentence_spans(cues), duration=100)
    assert [(s.start, s.end) for s in spans] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert spans[1].text == "w2 w3"
    short = clip_spans([Span(0, 1, "a."), Span(1.2, 3, "b."), Span(10, 11, "c.")], duration=10.5)
    assert [(s.start, s.end, s.text) for s in short] == [(0, 3, "a. b."), (10, 10.5, "c.")]


def test_a_single_long_cue_splits_evenly_with_its_words():
    spans = clip_spans([Span(0, 24, "one two three four five six seven eight")], duration=30)
    assert len(spans) == 4 and all(s.duration == pytest.approx(6) for s in spans)
    assert " ".join(s.text for s in spans) == "one two three four five six seven eight"


def test_out_of_range_spans_are_dropped():
    assert clip_spans([Span(50, 55, "late.")], duration=40) == []
