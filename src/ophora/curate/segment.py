"""Narration cues -> sentence spans -> clip spans aligned with the narration."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from ophora.curate.subtitles import Cue

_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")


@dataclass(frozen=True)
class Span:
    """A stretch of video (seconds) and the narration spoken over it."""

    start: float
    end: float
    text: str
    cues: tuple[Cue, ...] = ()  # the narration cues inside, where known: long spans are split between them

    @property
    def duration(self) -> float:
        return self.end - self.start


def join_rolling(text: str, new: str) -> str:
    """`text` followed by `new` without the words `new` repeats from the end of `text` (rolling captions
    show each line twice: "center the lens now" + "center the lens now the lens is centered" -> one copy)."""
    old, words = text.split(), new.split()
    lower_old, lower_new = [w.lower() for w in old], [w.lower() for w in words]
    for n in range(min(len(old), len(words)), 0, -1):
        if lower_old[-n:] == lower_new[:n] and (n >= 3 or n == len(words)):
            return " ".join(old + words[n:])
    return f"{text} {new}"


def _joined(cues: list[Cue]) -> str:
    return functools.reduce(join_rolling, (c.text for c in cues[1:]), cues[0].text)


def sentence_spans(cues: list[Cue], max_gap: float = 1.5) -> list[Span]:
    """Join cues until a sentence ends (., !, ?) or the speaker pauses longer than `max_gap` seconds.

    A cue that only repeats what the span already says (a duplicated or rolling caption) extends it in time
    and adds only its new words; it never starts a span of its own.
    """
    spans: list[Span] = []
    current: Span | None = None
    for cue in cues:
        repeated = current is not None and join_rolling(current.text, cue.text) == current.text
        if current is not None and cue.start - current.end <= max_gap and (
                repeated or not _SENTENCE_END.search(current.text)):
            current = Span(current.start, max(current.end, cue.end), join_rolling(current.text, cue.text),
                           current.cues + (cue,))
        else:
            if current is not None:
                spans.append(current)
            current = Span(cue.start, cue.end, cue.text, (cue,))
    if current is not None:
        spans.append(current)
    return spans


def _split_evenly(span: Span, max_s: float, target_s: float) -> list[Span]:
    """Cut a long span into equal parts near `target_s`, sharing its words out in proportion."""
    parts = max(math.ceil(span.duration / max_s), round(span.duration / target_s))
    words = span.text.split()
    step = span.duration / parts
    out = []
    for i in range(parts):
        text = " ".join(words[round(i * len(words) / parts):round((i + 1) * len(words) / parts)])
        out.append(Span(span.start + i * step, span.start + (i + 1) * step, text))
    return out


def _split(span: Span, max_s: float, target_s: float) -> list[Span]:
    """Cut a long span between its cues into parts near `target_s` (evenly inside a cue longer than `max_s`)."""
    out: list[Span] = []
    group: list[Cue] = []
    for cue in span.cues:
        if group and (abs(cue.end - group[0].start - target_s) > abs(group[-1].end - group[0].start - target_s)
                      or cue.end - group[0].start > max_s):
            out.append(Span(group[0].start, group[-1].end, _joined(group), tuple(group)))
            group = []
        group.append(cue)
    if group:
        out.append(Span(group[0].start, group[-1].end, _joined(group), tuple(group)))
    if not span.cues:
        out = [span]
    return [piece for part in out
            for piece in (_split_evenly(part, max_s, target_s) if part.duration > max_s else [part])]


def clip_spans(spans: list[Span], duration: float, min_s: float = 2.0, max_s: float = 10.0,
               target_s: float = 5.5, max_gap: float = 1.5) -> list[Span]:
    """Clip candidates: spans clamped to [0, duration], short neighbours merged, long ones split.

    A span still shorter than `min_s` after merging is returned as is; the caller rejects it with a reason.
    """
    clamped = [Span(max(s.start, 0.0), min(s.end, duration), s.text, s.cues) for s in spans]
    clamped = [s for s in clamped if s.end > s.start]
    merged: list[Span] = []
    for span in clamped:
        prev = merged[-1] if merged else None
        if (prev is not None and span.start - prev.end <= max_gap and span.end - prev.start <= max_s
                and (prev.duration < min_s or span.duration < min_s)):
            merged[-1] = Span(prev.start, span.end, f"{prev.text} {span.text}", prev.cues + span.cues)
        else:
            merged.append(span)
    out = [piece for span in merged for piece in (_split(span, max_s, target_s) if span.duration > max_s else [span])]
    out = [Span(max(s.start, 0.0), min(s.end, duration), s.text, s.cues) for s in out]
    kept: list[Span] = []
    for span in out:  # clips never overlap: a span starts where the one before it ends
        start = max(span.start, kept[-1].end) if kept else span.start
        if span.end > start:
            kept.append(Span(start, span.end, span.text, span.cues))
    return kept
