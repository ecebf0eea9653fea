"""Text must survive: multi-line CSV fields, SSA/ASS override tags, cue numbers, Whisper segments without text."""

from __future__ import annotations

import json

import pytest

from ophora.core.tables import read_id_text_rows
from ophora.curate.subtitles import Cue, parse_srt, parse_vtt, parse_whisper_json, read_subtitles


def test_quoted_multiline_csv_field_keeps_its_line_break_as_a_space(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('clip id,caption prompt\na,"Polish the\nposterior\r\ncapsule"\nb,"one,  two\n\n three"\nc,plain\n',
                    encoding="utf-8", newline="")
    rows = read_id_text_rows(path, "clip id", "caption prompt", "prompts file")
    assert rows == [(2, "a", "Polish the posterior capsule"), (5, "b", "one, two three"), (8, "c", "plain")]


def test_line_numbers_after_a_multiline_field_name_the_right_row(tmp_path):
    from ophora.core.errors import InputError

    path = tmp_path / "prompts.csv"
    path.write_text('clip id,caption prompt\na,"two\nlines"\na,again\n', encoding="utf-8")
    with pytest.raises(InputError, match="duplicate clip id 'a' on lines 2 and 4"):
        read_id_text_rows(path, "clip id", "caption prompt", "prompts file")


@pytest.mark.parametrize("tagged, clean", [
    ("{\\an8}Insert the keratome.", "Insert the keratome."),
    ("{\\i1}Inject{\\i0} the viscoelastic.", "Inject the viscoelastic."),
    ("{\\pos(320,40)\\c&H00FFFF&}Rotate the lens.", "Rotate the lens."),
    ("First line\\Nsecond line", "First line second line"),
    ("<font color=\"#fff\">{\\an2}Polish</font> &amp; rinse.", "Polish & rinse."),
])
def test_ssa_override_tags_never_reach_the_narration(tagged, clean):
    srt = f"1\n00:00:01,000 --> 00:00:03,000\n{tagged}\n\n"
    vtt = f"WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n{tagged}\n\n"
    assert parse_srt(srt) == [Cue(1.0, 3.0, clean)]
    assert parse_vtt(vtt) == [Cue(1.0, 3.0, clean)]


def test_cue_numbers_without_blank_lines_between_cues_are_dropped():
    srt = ("1\n00:00:01,000 --> 00:00:02,000\nMake the incision.\n2\n00:00:02,000 --> 00:00:04,000\n"
           "Open 2 ports.\n  3  \n00:00:04,000 --> 00:00:05,000\nInject.\n")
    assert [c.text for c in parse_srt(srt)] == ["Make the incision.", "Open 2 ports.", "Inject."]


def test_a_number_spoken_as_the_last_line_of_a_cue_is_kept():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nCount to\n3\n\n2\n00:00:02,000 --> 00:00:03,000\nDone.\n"
    assert [c.text for c in parse_srt(srt)] == ["Count to 3", "Done."]


def test_whisper_segments_without_text_are_skipped_not_read_as_none():
    doc = {"segments": [{"start": 0, "end": 1, "text": None}, {"start": 1, "end": 2, "text": " Incise."},
                        {"start": 2, "end": 3}]}
    cues = parse_whisper_json(json.dumps(doc))
    assert cues == [Cue(1.0, 2.0, "Incise.")]
    assert all("None" not in c.text for c in cues)


@pytest.mark.parametrize("bad", [
    {"start": "soon", "end": 2, "text": "x"}, {"start": None, "end": 2, "text": "x"}, "not a segment", 7, None,
    {"start": 0, "end": float("inf"), "text": "x"}, {"start": True, "end": 2, "text": "x"},
    {"start": 0, "end": 2, "text": ["a", "list"]},
])
def test_one_bad_whisper_segment_skips_only_itself(tmp_path, bad, caplog):
    good = [{"start": 0.0, "end": 2.0, "text": "Incise."}, {"start": 4.0, "end": 6.0, "text": "Inject."}]
    path = tmp_path / "talk.json"
    path.write_text(json.dumps({"segments": [good[0], bad, good[1]]}), encoding="utf-8")
    assert read_subtitles(path) == [Cue(0.0, 2.0, "Incise."), Cue(4.0, 6.0, "Inject.")]
    assert f"{path}: skipped 1 of 3 segments" in caplog.text and "(number 2)" in caplog.text  # the file and segment
