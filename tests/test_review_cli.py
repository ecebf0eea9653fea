"""`ophora review` on the command line: a study made only from good inputs, an interrupted create resumed,
custom criteria, a study extended for raters who rate everything, serving on localhost by default with a
one-line error for an address it cannot use, and no secret in the server's output or the study's files."""

from __future__ import annotations

import secrets
import shutil
import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
from review_helpers import Server, make_real, make_samples
from test_bad_inputs import one_line_error

from ophora.cli import main
from ophora.review import study as study_module
from ophora.review.answers import authenticate, record_comment, record_score
from ophora.review.config import AddRaterConfig, CreateConfig
from ophora.review.criteria import DEFAULT_CRITERIA
from ophora.review.study import add_rater, connect, create_study


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("review-inputs")
    return {"samples": make_samples(root / "samples", per_phase=1), "real": make_real(root / "real", 2)}


def rows(folder: Path, query: str, *args) -> list[tuple]:
    db = sqlite3.connect(folder / "study.sqlite")
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def test_bad_inputs_make_no_study(inputs, tmp_path, capsys):
    folder = tmp_path / "study"
    (tmp_path / "empty.txt").write_text("# nothing\n")
    for extra, named in ((["--real", str(tmp_path / "nope")], "real-video folder not found"),
                         (["--criteria", str(tmp_path / "empty.txt")], "lists no criteria"),
                         (["--criteria", str(tmp_path / "none.txt")], "criteria file not found"),
                         (["--per-rater", "0"], "--per-rater must be at least 1")):
        line = one_line_error(capsys, "review", "create", str(folder), "--generated", str(inputs["samples"]), *extra)
        assert named in line, line
        assert not folder.exists(), extra  # refused before anything was made
    assert main(["review", "create", str(folder), "--generated", str(inputs["samples"]), "--per-rater", "2"]) == 0
    line = one_line_error(capsys, "review", "create", str(folder), "--per-rater", "3", "--real", str(inputs["real"]))
    assert "--per-rater 2" in line and "keeps it" in line


def test_interrupted_create_resumes_and_gives_the_admin_link(inputs, tmp_path, monkeypatch, capsys):
    folder, made = tmp_path / "study", []
    real_transcode = study_module.transcode

    def stop_after_two(src, dst, target):
        if len(made) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third video is being encoded
        made.append(real_transcode(src, dst, target))

    monkeypatch.setattr(study_module, "transcode", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        create_study(CreateConfig(study=folder, generated=inputs["samples"], seed=1))
    assert rows(folder, "SELECT COUNT(*) FROM videos") == [(2,)]
    monkeypatch.setattr(study_module, "transcode", real_transcode)
    capsys.readouterr()
    assert main(["review", "create", str(folder), "--generated", str(inputs["samples"])]) == 0
    out = capsys.readouterr().out
    assert "1 videos added, 3 in the study" in out and "admin link" in out
    token = out.split("#t=")[1].split()[0]
    with Server(folder) as server:
        client = httpx.Client(base_url=server.url, timeout=10)
        assert client.post("/api/admin/session", json={"token": token}).status_code == 200
        assert client.get("/api/admin/progress").json()["videos"] == {"generated": 3}
    assert rows(folder, "SELECT COUNT(*) FROM raters WHERE role='admin'") == [(1,)]
    assert main(["review", "create", str(folder), "--generated", str(inputs["samples"])]) == 0
    assert "admin link" not in capsys.readouterr().out  # given once


def test_custom_criteria_and_extending_a_study(inputs, tmp_path, capsys):
    folder, criteria = tmp_path / "study", tmp_path / "criteria.txt"
    criteria.write_text("# two criteria\nSharpness: is the picture sharp?\n\nRealism\n")
    create_study(CreateConfig(study=folder, generated=inputs["samples"], criteria=criteria, seed=2))
    ann = add_rater(AddRaterConfig(study=folder, name="ann"))
    assert rows(folder, "SELECT key, label, help FROM criteria ORDER BY position") == [
        ("sharpness", "Sharpness", "is the picture sharp?"), ("realism", "Realism", "")]
    first = rows(folder, "SELECT video FROM assignments a JOIN raters r ON r.id = a.rater WHERE r.name = 'ann' "
                         "ORDER BY position")
    other = tmp_path / "other.txt"
    other.write_text("Sharpness\n")
    assert "keeps its criteria" in one_line_error(capsys, "review", "create", str(folder), "--criteria", str(other),
                                                         "--real", str(inputs["real"]))
    # raters who rate everything get the new videos too; the videos they had keep their order
    create_study(CreateConfig(study=folder, real=inputs["real"]))
    order = rows(folder, "SELECT a.video, v.kind FROM assignments a JOIN raters r ON r.id = a.rater "
                         "JOIN videos v ON v.id = a.video WHERE r.name = 'ann' ORDER BY position")
    assert [(v,) for v, k in order if k == "generated"] == first and [k for _, k in order].count("real") == 2
    assert ann.videos == 3
    assert add_rater(AddRaterConfig(study=folder, name="ben")).videos == 5


def test_extending_mixes_new_videos_into_what_raters_have_not_answered(tmp_path):
    folder = tmp_path / "study"
    create_study(CreateConfig(study=folder, generated=make_samples(tmp_path / "samples", per_phase=2), seed=11))
    names = [f"rater{i}" for i in range(20)]
    tokens = {name: add_rater(AddRaterConfig(study=folder, name=name)).token for name in names}
    db = connect(folder / "study.sqlite")
    first, second = (c.key for c in DEFAULT_CRITERIA[:2])
    answered = {}  # rater -> videos they may have seen: every position up to their last answer
    for i, name in enumerate(names):
        rater = authenticate(db, tokens[name], "rater")
        order = order_of(folder, name)
        if i == 0:  # answers the first video and the fourth, skipping two: all four keep their places
            record_score(db, rater, secrets.token_hex(16), order[0], first, 3)
            record_score(db, rater, secrets.token_hex(16), order[3], second, 4)
            answered[name] = 4
        elif i == 1:  # a comment written and cleared on the third video still counts as seen
            record_comment(db, rater, secrets.token_hex(16), order[2], "odd")
            record_comment(db, rater, secrets.token_hex(16), order[2], "")
            answered[name] = 3
        else:
            for video in order[:1 + i % 3]:
                record_score(db, rater, secrets.token_hex(16), video, first, 2)
            answered[name] = 1 + i % 3
    db.close()
    before = {name: order_of(folder, name) for name in names}
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin)
    real = make_real(tmp_path / "real", 4)
    create_study(CreateConfig(study=folder, real=real))
    create_study(CreateConfig(study=twin, real=real))
    new_ids = {v for (v,) in rows(folder, "SELECT id FROM videos WHERE kind='real'")}
    assert len(new_ids) == 4
    places, all_at_end = [], 0
    for name in names:
        after, seen = order_of(folder, name), answered[name]
        assert after[:seen] == before[name][:seen]  # what the rater may have seen did not move
        rest = after[seen:]
        assert [v for v in rest if v not in new_ids] == before[name][seen:]  # nor did the unanswered videos' order
        assert set(after) - set(before[name]) == new_ids and len(after) == len(set(after)) == 10
        slots = [j for j, v in enumerate(rest) if v in new_ids]
        places += [(j + 0.5) / len(rest) for j in slots]  # where in the unanswered part, 0 (start) to 1 (end)
        all_at_end += slots == list(range(len(rest) - 4, len(rest)))
        # the same study extended with the same videos gives the same order
        assert origins(folder, name) == origins(twin, name)
    # appended, every new video would sit at the end (mean place 0.67-0.78 for these orders, all_at_end 20);
    # placed at random the mean place is 0.5 (standard error about 0.03 over these 80 places)
    assert abs(sum(places) / len(places) - 0.5) < 0.1, places
    assert all_at_end <= 5, all_at_end
    assert min(places) < 0.25 and max(places) > 0.75


def order_of(folder: Path, name: str) -> list[str]:
    return [v for (v,) in rows(folder, "SELECT a.video FROM assignments a JOIN raters r ON r.id = a.rater "
                                       "WHERE r.name = ? ORDER BY a.position", name)]


def origins(folder: Path, name: str) -> list[str]:
    """A rater's order by source file: video ids are random, so two copies of a study differ in them."""
    return [Path(o).name for (o,) in rows(folder, "SELECT v.origin FROM assignments a JOIN raters r ON r.id = a.rater "
                                                  "JOIN videos v ON v.id = a.video WHERE r.name = ? ORDER BY a.position",
                                          name)]


def test_serves_on_localhost_by_default_and_names_an_address_it_cannot_use(inputs, tmp_path, monkeypatch, capsys):
    import uvicorn

    folder = tmp_path / "study"
    create_study(CreateConfig(study=folder, generated=inputs["samples"], seed=3))
    bound = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: bound.extend(s.getsockname() for s in sockets))
    assert main(["review", "serve", str(folder), "--port", "0"]) == 0
    assert bound[0][0] == "127.0.0.1"  # only this machine, unless --host says otherwise
    assert f":{bound[0][1]}/" in capsys.readouterr().out  # the port it really listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, "review", "serve", str(folder), "--port", str(port))
    assert f"cannot listen on --host 127.0.0.1 --port {port}" in line
    assert "--host no.such.host.invalid" in one_line_error(capsys, "review", "serve", str(folder),
                                                           "--host", "no.such.host.invalid")
    assert "--port must be 0-65535" in one_line_error(capsys, "review", "serve", str(folder), "--port", "70000")


def test_no_secret_in_the_server_output_or_the_study_files(inputs, tmp_path):
    folder = tmp_path / "study"
    admin_token = create_study(CreateConfig(study=folder, generated=inputs["samples"], seed=4)).admin_link.split("#t=")[1]
    token = add_rater(AddRaterConfig(study=folder, name="ann")).token
    wrong = token[:-4] + "AAAA"
    with Server(folder) as server:
        client = httpx.Client(base_url=server.url, timeout=10)
        assert client.post("/api/session", json={"token": wrong}).status_code == 401
        assert client.post("/api/session", json={"token": token}).status_code == 200
        state = client.get("/api/state").json()
        body = {"request": "r" * 32, "video": state["items"][0]["video"], "criterion": state["criteria"][0]["key"],
                "score": 4}
        assert client.post("/api/score", json=body, headers={"x-ophora-csrf": state["csrf"]}).status_code == 200
        assert client.post("/api/score", json=body, headers={"x-ophora-csrf": state["csrf"]}).status_code == 409
        assert client.get(f"/api/video/{body['video']}").status_code == 200
        assert client.get("/api/video/..%2fstudy.sqlite").status_code == 404
    assert "ophora review:" in server.output  # the output was captured
    stored = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())  # the database, its WAL and index
    for secret in (token, wrong, admin_token, state["csrf"]):
        assert secret not in server.output
        assert secret.encode() not in stored
