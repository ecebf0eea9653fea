"""`ophora review` on the command line: serving on localhost by default, with a one-line error for an address
it cannot use, and no secret in the server's output or the study's files."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from review_helpers import Server, make_samples
from test_bad_inputs import one_line_error

from ophora.cli import main
from ophora.review.config import AddRaterConfig, CreateConfig
from ophora.review.study import add_rater, create_study


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("review-inputs")
    return {"samples": make_samples(root / "samples", per_phase=1)}


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
