"""A study: one SQLite file (WAL mode) beside a folder of re-encoded videos named by opaque ids.

    STUDY/study.sqlite   meta, criteria, videos, raters (token hashes), assignments, scores, comments, events
    STUDY/media/<id>.mp4 every video, re-encoded alike (transcode.py); the id is random, never derived from a name

Every write is one transaction committed before the server answers (synchronous=FULL), so a restart or a
crash loses nothing that a rater was told was saved. Tokens are 32 random bytes; only their SHA-256 is stored.
A study is extended by running `create` again with more videos (mixed into the not yet answered part of the
orders of raters who rate everything, see `_mix_in`) or by adding raters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ophora.core.errors import InputError
from ophora.review.config import AddRaterConfig, CreateConfig
from ophora.review.criteria import DEFAULT_CRITERIA, Criterion, read_criteria
from ophora.review.inputs import read_generated, read_real
from ophora.review.transcode import Target, choose_target, transcode

log = logging.getLogger("ophora.review")

DB_NAME, MEDIA = "study.sqlite", "media"
SCHEMA_VERSION = 1
MEDIA_MTIME = 946684800  # every media file gets this modification time (2000-01-01): no header dates a video

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS criteria (key TEXT PRIMARY KEY, label TEXT NOT NULL, help TEXT NOT NULL,
    position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS videos (id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('generated', 'real')),
    origin TEXT NOT NULL UNIQUE, clip_id TEXT NOT NULL, n INTEGER NOT NULL, phase TEXT NOT NULL,
    instruction TEXT NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS raters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')), token_hash TEXT NOT NULL UNIQUE, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (rater INTEGER NOT NULL REFERENCES raters(id),
    position INTEGER NOT NULL, video TEXT NOT NULL REFERENCES videos(id),
    PRIMARY KEY (rater, position), UNIQUE (rater, video));
CREATE TABLE IF NOT EXISTS scores (rater INTEGER NOT NULL, video TEXT NOT NULL, criterion TEXT NOT NULL
    REFERENCES criteria(key), score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5), updated REAL NOT NULL,
    PRIMARY KEY (rater, video, criterion), FOREIGN KEY (rater, video) REFERENCES assignments(rater, video));
CREATE TABLE IF NOT EXISTS comments (rater INTEGER NOT NULL, video TEXT NOT NULL, comment TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (rater, video), FOREIGN KEY (rater, video) REFERENCES assignments(rater, video));
CREATE TABLE IF NOT EXISTS events (rater INTEGER NOT NULL, request TEXT NOT NULL, video TEXT NOT NULL,
    criterion TEXT, score INTEGER, comment TEXT, at REAL NOT NULL, PRIMARY KEY (rater, request));
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the study database: WAL, full sync, foreign keys, a busy wait instead of errors."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error): one writer at a time, all or nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_study(folder: Path) -> sqlite3.Connection:
    """The database of an existing study, or an InputError saying how to make one."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        raise InputError(f"{folder} holds no study ({DB_NAME}); make one with 'ophora review create {folder} --generated SAMPLES'")
    try:
        db = connect(path)
        version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.DatabaseError as exc:  # not a database, or another program's (no meta table)
        raise InputError(f"{path} is damaged or not a study database ({exc}); restore it from a backup or make a new "
                         "study") from None
    if version is None or int(version[0]) != SCHEMA_VERSION:
        raise InputError(f"{path} is not a study of this ophora version (schema {version[0] if version else 'none'})")
    return db


def meta(db: sqlite3.Connection, key: str, default=None):
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def set_meta(db: sqlite3.Connection, key: str, value) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
               (key, json.dumps(value)))


def criteria(db: sqlite3.Connection) -> list[Criterion]:
    return [Criterion(r["key"], r["label"], r["help"]) for r in db.execute("SELECT * FROM criteria ORDER BY position")]


# ---------------------------------------------------------------------------------------------- create / extend


@dataclass
class CreateResult:
    added: int  # videos added by this call
    videos: int  # videos in the study
    admin_link: str | None  # printed once, when the study is made
    warnings: list[str]


def create_study(config: CreateConfig) -> CreateResult:
    """Make the study (or extend it with the videos it lacks): criteria, re-encoded videos, per-rater orders."""
    folder = Path(config.study)
    if config.generated is None and config.real is None:
        raise InputError("give the videos to rate: --generated SAMPLES (a folder written by 'ophora sample') and/or --real REAL")
    if config.per_rater is not None and config.per_rater < 1:
        raise InputError(f"--per-rater must be at least 1, got {config.per_rater}")
    generated = read_generated(Path(config.generated)) if config.generated else []
    new_study = not (folder / DB_NAME).is_file()
    if new_study and not generated:
        raise InputError("a new study needs --generated SAMPLES (their size and frame rate set the study's)")
    wanted = read_criteria(Path(config.criteria)) if config.criteria else DEFAULT_CRITERIA
    # every input is read and checked before anything is made: a bad one leaves no half-made study behind
    if new_study:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise InputError(f"{folder} exists and is not an empty folder; choose a new study folder")
        target = choose_target([s.path for s in generated])
        phases = {s.phase for s in generated}
    else:
        db = open_study(folder)
        if config.criteria and [c.key for c in criteria(db)] != [c.key for c in wanted]:
            raise InputError(f"{folder} was made with other criteria; a study keeps its criteria (make a new one)")
        if config.per_rater is not None and config.per_rater != meta(db, "per_rater"):
            made = meta(db, "per_rater")
            raise InputError(f"{folder} was made with {'--per-rater ' + str(made) if made else 'every video for every rater'}"
                             f"; a study keeps it (--per-rater {config.per_rater} was given)")
        target = Target(**meta(db, "target"))
        phases = {s.phase for s in generated} | {r[0] for r in db.execute("SELECT phase FROM videos WHERE kind='generated'")}
    real = read_real(Path(config.real), phases) if config.real else []
    if new_study:
        (folder / MEDIA).mkdir(parents=True, exist_ok=True)
        db = connect(folder / DB_NAME)
        db.executescript(SCHEMA)
        with transaction(db):
            set_meta(db, "schema", SCHEMA_VERSION)
            set_meta(db, "study_id", secrets.token_hex(8))
            set_meta(db, "seed", secrets.randbits(48) if config.seed is None else config.seed)
            set_meta(db, "per_rater", config.per_rater)
            set_meta(db, "target", target.as_dict())
            set_meta(db, "created", time.time())
            for position, c in enumerate(wanted):
                db.execute("INSERT INTO criteria VALUES (?, ?, ?, ?)", (c.key, c.label, c.help, position))
    known = {r[0] for r in db.execute("SELECT origin FROM videos")}
    todo = [s for s in generated + real if str(s.path) not in known]
    added = []
    for i, source in enumerate(todo, start=1):
        video_id = secrets.token_hex(16)
        log.info("video %d/%d: re-encoding %s", i, len(todo), source.path.name)
        media = folder / MEDIA / f"{video_id}.mp4"
        transcode(source.path, media, target)
        os.utime(media, (MEDIA_MTIME, MEDIA_MTIME))
        with transaction(db):  # one commit per video: an interrupted create resumes where it stopped
            db.execute("INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (video_id, source.kind, str(source.path), source.clip_id, source.n, source.phase,
                        source.instruction, time.time()))
        added.append(video_id)
    if meta(db, "per_rater") is None:  # raters who rate everything get the new videos (and any a stopped run left)
        with transaction(db):
            for rater in db.execute("SELECT id, name FROM raters WHERE role='rater'").fetchall():
                _mix_in(db, rater["id"], rater["name"], meta(db, "seed"))
    admin_link = None
    if db.execute("SELECT 1 FROM raters WHERE role='admin'").fetchone() is None:  # new, or its first create stopped
        admin_link = add_rater(AddRaterConfig(study=folder, name="admin", admin=True)).link
    warnings = _blinding_warnings(db)
    total = db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
    db.close()
    return CreateResult(len(added), total, admin_link, warnings)


def _blinding_warnings(db: sqlite3.Connection) -> list[str]:
    """What would let a rater tell real from generated videos by their text alone."""
    warnings = []
    for what, column in (("phase", "phase"), ("instruction", "instruction")):
        rows = dict(db.execute(f"SELECT kind, SUM({column} = '') FROM videos GROUP BY kind").fetchall())
        if rows.get("real") and not rows.get("generated"):
            warnings.append(f"{rows['real']} real videos have no {what} while every generated one has one: raters could "
                            f"tell them apart (give real videos an instructions.csv with 'instruction' and 'phase' columns)")
    return warnings


def _shuffled(videos: list[str], seed: int, name: str, count: int, load: dict[str, int] | None = None) -> list[str]:
    """`count` of `videos` in a random order of this rater's own; with `load`, the least-rated videos first."""
    rng = random.Random(f"{seed}:{name}")
    pool = list(videos)
    rng.shuffle(pool)
    if load is not None:
        pool.sort(key=lambda v: load.get(v, 0))  # stable: ties keep the random order
    chosen = pool[:count]
    rng.shuffle(chosen)
    return chosen


def _mix_in(db: sqlite3.Connection, rater: int, name: str, seed: int) -> None:
    """Put the videos this rater lacks at random places among the videos after the last one they answered.

    What the rater may have seen (every position up to the last video with a score or comment of theirs, in
    `events`, so a comment later cleared counts too) keeps its place. After it, the videos they have not
    answered keep their order and the new ones go into random gaps between them (and before and after them),
    in a random order: a random interleaving of two random orders is a random order, so nothing tells the new
    videos from the old. Seeded by the study's seed, the rater and the order's shape: the same study extended
    with the same videos gives the same order.
    """
    missing = [r[0] for r in db.execute("SELECT id FROM videos WHERE id NOT IN (SELECT video FROM assignments "
                                        "WHERE rater=?) ORDER BY origin", (rater,))]
    if not missing:
        return
    answered = db.execute("SELECT COALESCE(MAX(a.position), -1) FROM assignments a JOIN events e ON e.rater = a.rater "
                          "AND e.video = a.video WHERE a.rater=?", (rater,)).fetchone()[0]
    rest = [r[0] for r in db.execute("SELECT video FROM assignments WHERE rater=? AND position>? ORDER BY position",
                                     (rater, answered))]
    rng = random.Random(f"{seed}:{name}:mix:{answered}:{len(rest)}:{len(missing)}")
    rng.shuffle(missing)
    places = set(rng.sample(range(len(rest) + len(missing)), len(missing)))
    new, old = iter(missing), iter(rest)
    merged = [next(new) if i in places else next(old) for i in range(len(rest) + len(missing))]
    db.execute("DELETE FROM assignments WHERE rater=? AND position>?", (rater, answered))  # none has an answer
    db.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(rater, answered + 1 + i, v) for i, v in enumerate(merged)])


def _append(db: sqlite3.Connection, rater: int, videos: list[str]) -> None:
    start = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM assignments WHERE rater=?", (rater,)).fetchone()[0]
    db.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(rater, start + i, v) for i, v in enumerate(videos)])


# ---------------------------------------------------------------------------------------------- raters


@dataclass
class NewRater:
    name: str
    token: str
    link: str
    videos: int


def add_rater(config: AddRaterConfig) -> NewRater:
    """Add a rater (or an admin) with a fresh secret token and their own random order of videos.

    `replace` gives an existing rater a new token (a lost link) and keeps their answers and order.
    """
    name = config.name.strip()
    if not name or len(name) > 100 or any(ord(ch) < 32 for ch in name):
        raise InputError(f"a rater's name must be 1-100 printable characters, got {config.name!r}")
    url = urllib.parse.urlsplit(config.url)
    if url.scheme not in ("http", "https") or not url.netloc:  # checked before the rater is stored
        raise InputError(f"--url must be the http(s) address raters reach the server at (e.g. http://host:8000), "
                         f"got {config.url!r}")
    db = open_study(Path(config.study))
    token = secrets.token_urlsafe(32)
    role = "admin" if config.admin else "rater"
    with transaction(db):
        row = db.execute("SELECT id, role FROM raters WHERE name=?", (name,)).fetchone()
        if row is not None:
            if not config.replace:
                raise InputError(f"{config.study} already has a rater {name!r}; --replace gives them a new link "
                                 "(the old one stops working)")
            if row["role"] != role:
                raise InputError(f"{name!r} is {'an admin' if row['role'] == 'admin' else 'a rater'}; "
                                 f"{'drop' if config.admin else 'add'} --admin")
            db.execute("UPDATE raters SET token_hash=? WHERE id=?", (token_hash(token), row["id"]))
        else:
            cursor = db.execute("INSERT INTO raters (name, role, token_hash, added) VALUES (?, ?, ?, ?)",
                                (name, role, token_hash(token), time.time()))
            if role == "rater":
                videos = [r[0] for r in db.execute("SELECT id FROM videos ORDER BY id")]
                load = dict(db.execute("SELECT video, COUNT(*) FROM assignments GROUP BY video").fetchall())
                count = meta(db, "per_rater") or len(videos)
                _append(db, cursor.lastrowid, _shuffled(videos, meta(db, "seed"), name, count, load))
        rater_id = db.execute("SELECT id FROM raters WHERE name=?", (name,)).fetchone()[0]
        videos = db.execute("SELECT COUNT(*) FROM assignments WHERE rater=?", (rater_id,)).fetchone()[0]
    db.close()
    base = config.url.rstrip("/")
    link = f"{base}/admin#t={token}" if config.admin else f"{base}/#t={token}"
    return NewRater(name, token, link, videos)
