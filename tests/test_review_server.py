"""`ophora review` server against the real process on localhost: sign-in, blinding, range requests, and every
refusal the issue lists (no token, wrong token, another rater's answers, path traversal, bad scores, huge
comments, replays, cross-site writes, another rater's video), each checked to store nothing."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import sqlite3

import httpx
import pytest
from review_helpers import Server, make_real, make_samples

from ophora.cli import main
from ophora.review.config import AddRaterConfig, CreateConfig
from ophora.review.study import add_rater, create_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    samples, real = make_samples(root / "samples"), make_real(root / "real")
    result = create_study(CreateConfig(study=root / "study", generated=samples, real=real, seed=7))
    tokens = {name: add_rater(AddRaterConfig(study=root / "study", name=name)).token for name in ("alice", "bob")}
    tokens["admin"] = result.admin_link.split("#t=")[1]
    return {"root": root, "folder": root / "study", "tokens": tokens, "samples": samples, "real": real}


@pytest.fixture(scope="module")
def server(study):
    with Server(study["folder"]) as s:
        yield s


def signed_in(server, token, role="rater") -> tuple[httpx.Client, dict]:
    client = httpx.Client(base_url=server.url, timeout=10)
    path = "/api/session" if role == "rater" else "/api/admin/session"
    assert client.post(path, json={"token": token}).status_code == 200
    state = client.get("/api/state").json() if role == "rater" else {}
    return client, state


def rid() -> str:
    return secrets.token_hex(16)


def counts(study) -> tuple[int, int, int]:
    db = sqlite3.connect(study["folder"] / "study.sqlite")
    try:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("scores", "comments", "events"))
    finally:
        db.close()


def score_body(state, **changes) -> dict:
    return {"request": rid(), "video": state["items"][0]["video"], "criterion": state["criteria"][0]["key"],
            "score": 3, **changes}


def test_sign_in_state_and_writes(server, study):
    client, state = signed_in(server, study["tokens"]["alice"])
    assert client.cookies  # the session cookie
    cookie = client.get("/api/state").headers  # no token in any header of the answer
    assert study["tokens"]["alice"] not in json.dumps(dict(cookie))
    assert len(state["items"]) == 8 and len(state["criteria"]) == 7
    headers = {"x-ophora-csrf": state["csrf"]}
    video, key = state["items"][1]["video"], state["criteria"][2]["key"]
    assert client.post("/api/score", json={"request": rid(), "video": video, "criterion": key, "score": 2},
                       headers=headers).status_code == 200
    assert client.post("/api/score", json={"request": rid(), "video": video, "criterion": key, "score": 5},
                       headers=headers).status_code == 200
    assert client.post("/api/comment", json={"request": rid(), "video": video, "comment": "blurry iris"},
                       headers=headers).status_code == 200
    item = next(i for i in client.get("/api/state").json()["items"] if i["video"] == video)
    assert item["scores"] == {key: 5} and item["comment"] == "blurry iris"
    # bob sees none of it, and has his own random order of the same videos
    bob, bob_state = signed_in(server, study["tokens"]["bob"])
    assert all(not i["scores"] and not i["comment"] for i in bob_state["items"])
    assert sorted(i["video"] for i in bob_state["items"]) == sorted(i["video"] for i in state["items"])
    assert [i["video"] for i in bob_state["items"]] != [i["video"] for i in state["items"]]


def test_blinding_nothing_names_a_file_or_source(server, study):
    client, state = signed_in(server, study["tokens"]["alice"])
    db = sqlite3.connect(study["folder"] / "study.sqlite")
    videos = db.execute("SELECT id, kind, origin, clip_id FROM videos").fetchall()
    db.close()
    texts = [client.get(p).text for p in ("/", "/static/rate.js", "/static/style.css", "/api/state")]
    video_headers = {}
    for vid, kind, origin, clip_id in videos:
        r = client.get(f"/api/video/{vid}", headers={"range": "bytes=0-"})
        assert r.status_code == 206
        video_headers.setdefault(kind, []).append(r.headers)
        texts.append(json.dumps(dict(r.headers)))
    everything = "\n".join(texts).lower()
    for vid, kind, origin, clip_id in videos:
        for secret in (origin, clip_id, origin.split("/")[-1], str(study["root"]).lower()):
            assert secret.lower() not in everything
    for c in state["criteria"]:  # the criteria's own words ("realism", "real ones") are not a leak
        everything = everything.replace(c["label"].lower(), "").replace(c["help"].lower(), "")
    for word in ("generated", "real", "manifest", "clips", "kind", "source", "sample", "synthetic"):
        assert not re.search(rf"\b{word}\b", everything), word
    assert ".mp4" not in everything and '"origin"' not in everything
    assert {tuple(sorted(i)) for i in state["items"]} == {("comment", "instruction", "phase", "scores", "video")}
    # every video answer carries the same header names, media type and date
    names = {kind: {tuple(sorted(h.keys())) for h in hs} for kind, hs in video_headers.items()}
    assert names["real"] == names["generated"] and len(names["real"]) == 1
    for h in video_headers["real"] + video_headers["generated"]:
        assert h["content-type"] == "video/mp4" and h["last-modified"] == video_headers["real"][0]["last-modified"]
        assert "server" not in h and "content-disposition" not in h
    # the files themselves: one size, rate and container metadata for real and generated
    import av

    meta = set()
    for vid, kind, *_ in videos:
        with av.open(str(study["folder"] / "media" / f"{vid}.mp4")) as c:
            s = c.streams.video[0]
            meta.add((s.width, s.height, float(s.average_rate), s.frames, json.dumps(c.metadata, sort_keys=True)))
    assert len(meta) == 1


def test_range_requests_for_seeking(server, study):
    client, state = signed_in(server, study["tokens"]["alice"])
    url = f"/api/video/{state['items'][0]['video']}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={"range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    tail = client.get(url, headers={"range": f"bytes={len(whole.content) - 10}-"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    assert client.get(url, headers={"range": f"bytes={len(whole.content) + 5}-"}).status_code == 416


def test_refusals_store_nothing(server, study):
    client, state = signed_in(server, study["tokens"]["alice"])
    csrf = {"x-ophora-csrf": state["csrf"]}
    before = counts(study)

    anonymous = httpx.Client(base_url=server.url, timeout=10)
    assert anonymous.get("/api/state").status_code == 401  # no token
    assert anonymous.post("/api/score", json=score_body(state), headers=csrf).status_code == 401
    assert anonymous.get(f"/api/video/{state['items'][0]['video']}").status_code == 401
    assert anonymous.post("/api/session", json={"token": "wrong" + study["tokens"]["alice"][5:]}).status_code == 401
    cookie_name = next(iter(client.cookies.keys()))
    wrong = httpx.Client(base_url=server.url, timeout=10, cookies={cookie_name: secrets.token_urlsafe(32)})
    assert wrong.get("/api/state").status_code == 401  # a wrong token
    assert wrong.post("/api/score", json=score_body(state), headers=csrf).status_code == 401

    # rater A asking for rater B's answers: no parameter reaches another rater; the admin API is not A's
    bob, bob_state = signed_in(server, study["tokens"]["bob"])
    bob.post("/api/score", json=score_body(bob_state, score=1), headers={"x-ophora-csrf": bob_state["csrf"]})
    before = counts(study)
    bob_video, bob_key = bob_state["items"][0]["video"], bob_state["criteria"][0]["key"]
    for path in ("/api/state?rater=bob", "/api/state?rater=2", "/api/state?rater_id=2"):
        seen = client.get(path).json()
        assert seen["rater"] == "alice"
        assert next(i for i in seen["items"] if i["video"] == bob_video)["scores"].get(bob_key) is None
    assert client.get("/api/admin/progress").status_code == 401
    assert client.post("/api/admin/session", json={"token": study["tokens"]["alice"]}).status_code == 401
    assert client.post("/api/score", json=score_body(state), headers={"x-ophora-csrf": bob_state["csrf"]}).status_code == 403

    # path traversal, plain and encoded, in video and asset requests (raw, so nothing normalises the path)
    valid = state["items"][0]["video"]
    cookie = f"{cookie_name}={client.cookies[cookie_name]}"
    for path in ("/api/video/../study.sqlite", "/api/video/..%2fstudy.sqlite", "/api/video/..%2Fstudy.sqlite",
                 "/api/video/%2e%2e%2fstudy.sqlite", "/api/video/%252e%252e%252fstudy.sqlite",
                 "/api/video/..%5cstudy.sqlite", "/api/video/....//study.sqlite", f"/api/video/{valid}%00",
                 f"/api/video/{valid}.mp4", f"/api/video/{valid}/..%2f..%2fstudy.sqlite", "/api/video/%2e%2e",
                 "/static/..%2fserver.py", "/static/../server.py", "/static/%2e%2e%2fserver.py", "/media/" + valid + ".mp4",
                 "/study.sqlite", "/api/video/" + "a" * 31 + "G"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path, headers={"cookie": cookie})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status in (400, 404), path
        assert b"SQLite" not in body and b"import" not in body, path

    # bad values
    for bad in ({"score": 7}, {"score": 0}, {"score": "3"}, {"score": 3.0}, {"score": True}, {"criterion": "nope"},
                {"video": "0" * 32}, {"video": "../../study.sqlite"}, {"request": "short"}, {"extra": 1}):
        r = client.post("/api/score", json=score_body(state, **bad), headers=csrf)
        assert r.status_code in (404, 422), bad
    huge = {"request": rid(), "video": valid, "comment": "x" * 1_000_000}
    assert client.post("/api/comment", json=huge, headers=csrf).status_code == 413
    long = {"request": rid(), "video": valid, "comment": "x" * 2001}
    assert client.post("/api/comment", json=long, headers=csrf).status_code == 422

    # cross-site writes: no CSRF header, a wrong one, a foreign origin, a form post
    assert client.post("/api/score", json=score_body(state)).status_code == 403
    assert client.post("/api/score", json=score_body(state), headers={"x-ophora-csrf": "0" * 64}).status_code == 403
    assert client.post("/api/score", json=score_body(state), headers={**csrf, "origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/score", json=score_body(state), headers={**csrf, "sec-fetch-site": "cross-site"}).status_code == 403
    assert client.post("/api/score", content="request=x&score=3", headers={
        **csrf, "content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert counts(study) == before  # nothing above stored anything

    # a replayed request: refused, the answer stays as the newer request left it
    first = score_body(state, score=2)
    assert client.post("/api/score", json=first, headers=csrf).status_code == 200
    newer = {**first, "request": rid(), "score": 4}
    assert client.post("/api/score", json=newer, headers=csrf).status_code == 200
    stored = counts(study)
    assert client.post("/api/score", json=first, headers=csrf).status_code == 409
    assert client.post("/api/score", json=newer, headers=csrf).status_code == 409
    assert counts(study) == stored
    item = next(i for i in client.get("/api/state").json()["items"] if i["video"] == first["video"])
    assert item["scores"][first["criterion"]] == 4


def test_a_rater_cannot_fetch_a_video_of_another_rater(tmp_path, study):
    folder = tmp_path / "per-rater"
    create_study(CreateConfig(study=folder, generated=study["samples"], real=study["real"], per_rater=4, seed=8))
    tokens = {name: add_rater(AddRaterConfig(study=folder, name=name)).token for name in ("alice", "bob")}
    with Server(folder) as per_rater:
        alice, alice_state = signed_in(per_rater, tokens["alice"])
        bob, bob_state = signed_in(per_rater, tokens["bob"])
        mine = {i["video"] for i in alice_state["items"]}
        bobs = [i["video"] for i in bob_state["items"] if i["video"] not in mine]
        assert len(mine) == 4 and len(bobs) == 4  # the least-rated first: bob got the four alice did not
        unknown = secrets.token_hex(16)
        csrf = {"x-ophora-csrf": alice_state["csrf"]}
        before = counts({"folder": folder})
        for video in bobs:
            path = folder / "media" / f"{video}.mp4"
            assert bob.get(f"/api/video/{video}").content == path.read_bytes()  # there, and bob's to fetch
            for method, headers in (("GET", {}), ("HEAD", {}), ("GET", {"range": "bytes=0-99"})):
                refused, absent = (alice.request(method, f"/api/video/{v}", headers=headers) for v in (video, unknown))
                assert refused.status_code == absent.status_code == 404, method
                assert refused.content == absent.content and dict(refused.headers) == dict(absent.headers), method
            # nor through the API: alice's state never names it, writes on it are refused as on an unknown id
            assert video not in alice.get("/api/state").text
            for endpoint, body in (("/api/score", {"criterion": alice_state["criteria"][0]["key"], "score": 3}),
                                   ("/api/comment", {"comment": "seen it"})):
                refused, absent = (alice.post(endpoint, json={"request": rid(), "video": v, **body}, headers=csrf)
                                   for v in (video, unknown))
                assert refused.status_code == absent.status_code == 404, endpoint
                assert refused.content == absent.content and dict(refused.headers) == dict(absent.headers), endpoint
        assert counts({"folder": folder}) == before  # the refusals stored nothing
        own = alice.get(f"/api/video/{alice_state['items'][0]['video']}")
        assert own.status_code == 200 and own.headers["content-type"] == "video/mp4"


def test_admin_view_has_its_own_token(server, study):
    admin, _ = signed_in(server, study["tokens"]["admin"], role="admin")
    progress = admin.get("/api/admin/progress").json()
    assert {r["name"] for r in progress["raters"]} == {"alice", "bob"}
    assert all(r["assigned"] == 8 for r in progress["raters"])
    assert "scores" not in json.dumps(progress)
    assert admin.get("/api/state").status_code == 401  # the admin token is not a rater's
    assert httpx.post(f"{server.url}/api/session", json={"token": study["tokens"]["admin"]}).status_code == 401
    assert "Study progress" in admin.get("/admin").text


def test_cli_create_extend_and_errors(tmp_path, capsys, study):
    folder = tmp_path / "s"
    assert main(["review", "create", str(folder), "--generated", str(study["samples"]), "--per-rater", "4"]) == 0
    assert "admin link" in capsys.readouterr().out
    assert main(["review", "add-rater", str(folder), "carol"]) == 0
    link = capsys.readouterr().out.strip().split()[-1]
    assert "/#t=" in link
    assert main(["review", "add-rater", str(folder), "carol"]) == 2  # exists
    assert "already has a rater" in capsys.readouterr().err
    assert main(["review", "add-rater", str(folder), "carol", "--replace"]) == 0
    db = sqlite3.connect(folder / "study.sqlite")
    token = link.split("#t=")[1]
    assert token not in (folder / "study.sqlite").read_bytes().decode("latin-1")  # only hashes are stored
    assert db.execute("SELECT COUNT(*) FROM assignments a JOIN raters r ON r.id=a.rater WHERE r.name='carol'").fetchone()[0] == 4
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # extend with real videos: added once, a second run adds nothing
    assert main(["review", "create", str(folder), "--real", str(study["real"])]) == 0
    assert "2 videos added, 8 in the study" in capsys.readouterr().out
    assert main(["review", "create", str(folder), "--real", str(study["real"])]) == 0
    assert "0 videos added, 8 in the study" in capsys.readouterr().out
    assert main(["review", "add-rater", str(folder), "dave"]) == 0
    loads = [n for (n,) in db.execute("SELECT COUNT(*) FROM assignments GROUP BY video")]
    assert sorted(loads) == [1] * 8  # the least-rated videos are given first
    db.close()
    assert main(["review", "serve", str(tmp_path / "none")]) == 2
    assert "holds no study" in capsys.readouterr().err
    assert main(["review", "create", str(tmp_path / "new")]) == 2
    assert main(["review", "create", str(tmp_path / "new2"), "--generated", str(tmp_path)]) == 2
    assert "manifest" in capsys.readouterr().err
