"""What one rater may read and write: their own videos, scores and comments, nothing of anyone else's.

Every write names a request id chosen by the browser; the write and its id are committed together, so a
request sent twice (a retry after a lost answer, or a replay) is refused the second time and changes
nothing: an answer is stored exactly once, and an old request cannot undo a newer answer.
"""

from __future__ import annotations

import hmac
import sqlite3
import time
from dataclasses import dataclass

from ophora.review.criteria import SCALE
from ophora.review.study import token_hash, transaction

MAX_COMMENT = 2000  # characters


@dataclass(frozen=True)
class Rater:
    id: int
    name: str
    role: str


class Refused(Exception):
    """A request that is not carried out: HTTP status and a short reason for the browser."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def authenticate(db: sqlite3.Connection, token: str | None, role: str) -> Rater | None:
    """The rater holding `token` in `role`, or None. The stored hash is compared in constant time."""
    if not token or len(token) > 200:
        return None
    digest = token_hash(token)
    row = db.execute("SELECT id, name, role, token_hash FROM raters WHERE token_hash=?", (digest,)).fetchone()
    if row is None or not hmac.compare_digest(row["token_hash"], digest) or row["role"] != role:
        return None
    return Rater(row["id"], row["name"], row["role"])


def state(db: sqlite3.Connection, rater: Rater) -> dict:
    """The rater's page: criteria, their videos in their order (opaque id, phase, instruction) and their answers."""
    criteria = [{"key": r["key"], "label": r["label"], "help": r["help"]}
                for r in db.execute("SELECT * FROM criteria ORDER BY position")]
    scores: dict[str, dict[str, int]] = {}
    for r in db.execute("SELECT video, criterion, score FROM scores WHERE rater=?", (rater.id,)):
        scores.setdefault(r["video"], {})[r["criterion"]] = r["score"]
    comments = dict(db.execute("SELECT video, comment FROM comments WHERE rater=?", (rater.id,)).fetchall())
    items = [{"video": r["video"], "phase": r["phase"].replace("_", " "), "instruction": r["instruction"],
              "scores": scores.get(r["video"], {}), "comment": comments.get(r["video"], "")}
             for r in db.execute("SELECT a.video, v.phase, v.instruction FROM assignments a JOIN videos v "
                                 "ON v.id = a.video WHERE a.rater=? ORDER BY a.position", (rater.id,))]
    return {"rater": rater.name, "criteria": criteria, "scale": list(SCALE), "max_comment": MAX_COMMENT, "items": items}


def _check_assigned(db: sqlite3.Connection, rater: Rater, video: str) -> None:
    if db.execute("SELECT 1 FROM assignments WHERE rater=? AND video=?", (rater.id, video)).fetchone() is None:
        raise Refused(404, "no such video")


def _log_request(db: sqlite3.Connection, rater: Rater, request: str, video: str, now: float, **values) -> None:
    try:
        db.execute("INSERT INTO events (rater, request, video, criterion, score, comment, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (rater.id, request, video, values.get("criterion"), values.get("score"), values.get("comment"), now))
    except sqlite3.IntegrityError:
        raise Refused(409, "this request was already received") from None


def record_score(db: sqlite3.Connection, rater: Rater, request: str, video: str, criterion: str, score: int) -> None:
    """Store (or change) one score, together with its request id; Refused if anything is wrong."""
    if not (SCALE[0] <= score <= SCALE[1]):
        raise Refused(422, f"a score is {SCALE[0]}-{SCALE[1]}")
    now = time.time()
    with transaction(db):
        _check_assigned(db, rater, video)
        if db.execute("SELECT 1 FROM criteria WHERE key=?", (criterion,)).fetchone() is None:
            raise Refused(422, "no such criterion")
        _log_request(db, rater, request, video, now, criterion=criterion, score=score)
        db.execute("INSERT INTO scores VALUES (?, ?, ?, ?, ?) ON CONFLICT (rater, video, criterion) DO UPDATE SET "
                   "score=excluded.score, updated=excluded.updated", (rater.id, video, criterion, score, now))


def record_comment(db: sqlite3.Connection, rater: Rater, request: str, video: str, comment: str) -> None:
    """Store (or change, or with '' remove) the rater's comment on a video."""
    if len(comment) > MAX_COMMENT:
        raise Refused(422, f"a comment is at most {MAX_COMMENT} characters")
    now = time.time()
    with transaction(db):
        _check_assigned(db, rater, video)
        _log_request(db, rater, request, video, now, comment=comment)
        if comment.strip():
            db.execute("INSERT INTO comments VALUES (?, ?, ?, ?) ON CONFLICT (rater, video) DO UPDATE SET "
                       "comment=excluded.comment, updated=excluded.updated", (rater.id, video, comment, now))
        else:
            db.execute("DELETE FROM comments WHERE rater=? AND video=?", (rater.id, video))


def progress(db: sqlite3.Connection) -> dict:
    """The admin's view: per rater, videos assigned, fully rated, started, and the last activity (no scores)."""
    n_criteria = db.execute("SELECT COUNT(*) FROM criteria").fetchone()[0]
    rows = db.execute("""
        SELECT r.name, (SELECT COUNT(*) FROM assignments a WHERE a.rater = r.id) AS assigned,
               (SELECT COUNT(*) FROM (SELECT video FROM scores s WHERE s.rater = r.id GROUP BY video
                                      HAVING COUNT(*) = ?)) AS done,
               (SELECT COUNT(DISTINCT video) FROM scores s WHERE s.rater = r.id) AS started,
               (SELECT MAX(at) FROM events e WHERE e.rater = r.id) AS last
        FROM raters r WHERE r.role = 'rater' ORDER BY r.name""", (n_criteria,)).fetchall()
    raters = [dict(r) for r in rows]
    videos = dict(db.execute("SELECT kind, COUNT(*) FROM videos GROUP BY kind").fetchall())
    answers = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    return {"raters": raters, "videos": videos, "criteria": n_criteria, "answers": answers}
