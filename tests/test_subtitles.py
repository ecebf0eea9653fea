"""Subtitle readers: SRT, WebVTT (rolling auto-captions), Whisper JSON, odd encodings and broken timing."""

from __future__ import annotations

import pytest

from ophora.core.errors import MediaError
from ophora.curate.subtitles import Cue, find_sidecar, normalize_cues, parse_srt, parse_vtt, parse_whisper_json, read_subtitles

SRT = """1
00:00:01,000 --> 00:00:03,500
We make the <i>main</i> incision.

2
00:00:03,500 --> 00:00:06,000
Then the capsulorhexis &amp; hydrodissection.
"""

ROLLING_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.490 align:start position:0%
 
we<00:00:00.400><c> insert</c><00:00:00.800><c> the</c><00:00:01.000><c> keratome</c>

00:00:02.490 --> 00:00:02.500 align:start position:0%
we insert the keratome
 

00:00:02.500 --> 00:00:05.000 align:start position:0%
we insert the keratome
into<00:00:03.000><c> the</c><00:00:03.500><c> cornea</c>

00:00:05.000 --> 00:00:05.010 align:start position:0%
into the cornea
 
"""


def test_srt_markup_and_entities():
    assert parse_srt(SRT) == [Cue(1.0, 3.5, "We make the main incision."),
                              Cue(3.5, 6.0, "Then the capsulorhexis & hydrodissection.")]


def test_rolling_auto_captions_keep_each_line_once():
    cues = parse_vtt(ROLLING_VTT)
    assert [c.text for c in cues] == ["we insert the keratome", "into the cornea"]
    assert cues[0].start == 0.0 and cues[1].start == 2.5
    assert cues[1].end == pytest.approx(5.01)  # extended by the cue that only repeated its line


def test_vtt_with_cue_ids_and_hours():
    text = "WEBVTT\n\nNOTE made by hand\n\nintro\n01:00:00.000 --> 01:00:02.000\nHello\n\n2\n01:00:02.000 --> 01:00:04.000 line:90%\nWorld\n"
    assert parse_vtt(text) == [Cue(3600.0, 3602.0, "Hello"), Cue(3602.0, 3604.0, "World")]


def test_whisper_json_and_bare_list():
    doc = '{"text": "x", "segments": [{"id": 0, "start": 0.0, "end": 2.5, "text": " Incise."}, {"start": 2.5, "end": 4, "text": "Inject."}]}'
    assert parse_whisper_json(doc) == [Cue(0.0, 2.5, "Incise."), Cue(2.5, 4.0, "Inject.")]
    assert parse_whisper_json('[{"start": 1, "end": 2, "text": "a"}]') == [Cue(1.0, 2.0, "a")]
    with pytest.raises(MediaError, match="segments"):
        parse_whisper_json('{"text": "no segments"}')
    with pytest.raises(MediaError, match="not valid JSON"):
        parse_whisper_json("{")


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8-sig"),
    lambda t: t.replace("\n", "\r\n").encode("utf-8"),
    lambda t: t.encode("latin-1"),
    lambda t: t.encode("utf-16"),
], ids=["bom", "crlf", "latin1", "utf16"])
def test_encodings(tmp_path, encode):
    text = "1\n00:00:00,000 --> 00:00:02,000\nLa kératotomie à 12 h.\n"
    path = tmp_path / "v.srt"
    path.write_bytes(encode(text))
    assert read_subtitles(path) == [Cue(0.0, 2.0, "La kératotomie à 12 h.")]


def test_overlapping_negative_empty_and_unsorted_cues():
    cues = normalize_cues([Cue(5, 9, "third"), Cue(-1, 2, "first"), Cue(1, 6, "second"), Cue(3, 3, "zero"),
                           Cue(7, 8, "")])
    assert cues == [Cue(0.0, 1.0, "first"), Cue(1.0, 5.0, "second"), Cue(5.0, 9.0, "third")]


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(MediaError, match="unknown subtitle format"):
        read_subtitles(tmp_path / "a.txt")
    with pytest.raises(MediaError, match="cannot read"):
        read_subtitles(tmp_path / "missing.srt")


def test_find_sidecar_prefers_plain_then_english(tmp_path):
    video = tmp_path / "case [1].mp4"
    video.touch()
    assert find_sidecar(video) is None
    (tmp_path / "case [1].de.vtt").touch()
    (tmp_path / "case [1].en.vtt").touch()
    assert find_sidecar(video).name == "case [1].en.vtt"
    (tmp_path / "case [1].srt").touch()
    assert find_sidecar(video).name == "case [1].srt"
