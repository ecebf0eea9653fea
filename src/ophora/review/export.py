"""`ophora review export`: every answer, comment and accepted write as CSV (unblinded: source, clip id, file),
plus the summary (summary.py). Reads a consistent snapshot, so it can run while the server is serving."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ophora.core.errors import ConfigError
from ophora.core.files import write_csv
from ophora.review.config import ExportConfig
from ophora.review.study import criteria, open_study
from ophora.review.summary import summarize, write_summary

ANSWER_COLUMNS = ["rater", "video", "source", "clip id", "n", "phase", "criterion", "score", "updated", "file"]
COMMENT_COLUMNS = ["rater", "video", "source", "clip id", "n", "phase", "comment", "updated", "file"]
EVENT_COLUMNS = ["rater", "request", "video", "criterion", "score", "comment", "at"]


def _iso(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def export(config: ExportConfig) -> str:
    """Write the export into `config.out`; returns a one-line report."""
    if config.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be 0 (no interval) or more resamples, got {config.bootstrap}")
    db = open_study(Path(config.study))
    out = Path(config.out)
    db.execute("BEGIN")  # one read snapshot for every table
    video = ("v.kind AS source, v.clip_id AS \"clip id\", v.n, v.phase, v.origin AS file")
    answers = [dict(r) for r in db.execute(
        f"SELECT r.name AS rater, s.video, {video}, s.criterion, s.score, s.updated FROM scores s "
        "JOIN raters r ON r.id = s.rater JOIN videos v ON v.id = s.video "
        "JOIN criteria c ON c.key = s.criterion ORDER BY r.name, s.video, c.position")]
    comments = [dict(r) for r in db.execute(
        f"SELECT r.name AS rater, m.video, {video}, m.comment, m.updated FROM comments m "
        "JOIN raters r ON r.id = m.rater JOIN videos v ON v.id = m.video ORDER BY r.name, m.video")]
    events = [dict(r) for r in db.execute(
        "SELECT r.name AS rater, e.request, e.video, e.criterion, e.score, e.comment, e.at FROM events e "
        "JOIN raters r ON r.id = e.rater ORDER BY e.at, e.rowid")]
    labels = [(c.key, c.label) for c in criteria(db)]
    db.execute("COMMIT")
    db.close()
    for rows, key in ((answers, "updated"), (comments, "updated"), (events, "at")):
        for r in rows:
            r[key] = _iso(r[key])
    write_csv(out / "answers.csv", ANSWER_COLUMNS, answers)
    write_csv(out / "comments.csv", COMMENT_COLUMNS, comments)
    write_csv(out / "events.csv", EVENT_COLUMNS, events)
    summary = summarize(answers, labels, config.bootstrap, config.seed)
    write_summary(summary, out)
    return (f"{out}: {len(answers)} answers, {len(comments)} comments from {len(summary['raters'])} raters on "
            f"{summary['videos']} videos -> {out / 'summary.html'}")
