"""The web app (Starlette on uvicorn): the rater page, the admin's progress view, their JSON API and the videos.

Why Starlette + uvicorn: a small, well-kept ASGI stack (Starlette's only dependency is anyio) with range
requests built into its FileResponse (seeking in a video), a test client, and a server that holds many
slow video downloads open without a thread each; SQLite calls run in its thread pool.

Sign-in: a personal link is `http://host/#t=TOKEN`. The fragment never leaves the browser (not in requests,
logs or referrers): the page posts it once to /api/session, which sets an HttpOnly, SameSite=Strict cookie
for this study. Writes are CSRF-safe three ways: JSON bodies only (a cross-site form cannot send them),
a per-token CSRF value in a header that only this origin's page can read, and the Origin /
Sec-Fetch-Site headers checked. Blinding: the browser sees opaque random video ids, a phase and an
instruction, never a file name, path, clip id or source; every video response carries the same headers
(one media type, one fixed modification date).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ophora.core.errors import ConfigError
from ophora.review import answers
from ophora.review.config import ServeConfig
from ophora.review.study import DB_NAME, MEDIA, MEDIA_MTIME, connect, meta, open_study

log = logging.getLogger("ophora.review")

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "rate.html", "/admin": "admin.html"}
ASSETS = {"rate.js": "text/javascript", "admin.js": "text/javascript", "style.css": "text/css"}
VIDEO_ID = re.compile(r"[0-9a-f]{32}")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_BODY = 16 * 1024  # bytes of a JSON write (a comment of MAX_COMMENT characters fits)
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}


def csrf_value(token: str) -> str:
    return hashlib.sha256(b"ophora-review-csrf:" + token.encode("utf-8")).hexdigest()


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers={"cache-control": "no-store"})


class _SecurityHeaders:
    """ASGI middleware adding the security headers to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def make_app(folder: str | Path) -> Starlette:
    """The app serving one study folder."""
    folder = Path(folder).resolve()
    db0 = open_study(folder)
    study_id = meta(db0, "study_id")
    db0.close()
    media = (folder / MEDIA).resolve()
    local = threading.local()

    def db():
        if getattr(local, "db", None) is None:
            local.db = connect(folder / DB_NAME)
        return local.db

    async def in_db(fn, *args):
        """fn(connection, *args) in a worker thread, with that thread's own connection."""
        return await run_in_threadpool(lambda: fn(db(), *args))

    def cookie(role: str) -> str:
        return f"ophora_{role}_{study_id}"

    async def who(request: Request, role: str) -> tuple[answers.Rater | None, str]:
        token = request.cookies.get(cookie(role), "")
        rater = await in_db(answers.authenticate, token, role) if token else None
        return rater, token

    def same_origin(request: Request) -> bool:
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def read_json(request: Request) -> dict:
        """The JSON object of a write, or Refused: wrong content type, too large, not an object."""
        if not request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            raise answers.Refused(415, "send JSON")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise answers.Refused(413, "request too large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise answers.Refused(413, "request too large")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise answers.Refused(400, "not JSON") from None
        if not isinstance(data, dict):
            raise answers.Refused(400, "send a JSON object")
        return data

    async def write_guard(request: Request, role: str = "rater") -> tuple[answers.Rater, dict]:
        if not same_origin(request):
            raise answers.Refused(403, "cross-site request")
        rater, token = await who(request, role)
        if rater is None:
            raise answers.Refused(401, "not signed in; open your personal link again")
        if not hmac.compare_digest(request.headers.get("x-ophora-csrf", ""), csrf_value(token)):
            raise answers.Refused(403, "missing or wrong CSRF header")
        return rater, await read_json(request)

    def fields(data: dict, spec: dict[str, type]) -> dict:
        if set(data) != set(spec):
            raise answers.Refused(422, f"expected exactly the fields {', '.join(sorted(spec))}")
        for name, kind in spec.items():
            value = data[name]
            if type(value) is not kind:  # bool is not an int here
                raise answers.Refused(422, f"{name} must be {'a whole number' if kind is int else 'text'}")
        if not REQUEST_ID.fullmatch(data["request"]):
            raise answers.Refused(422, "bad request id")
        if not VIDEO_ID.fullmatch(data["video"]):
            raise answers.Refused(404, "no such video")
        return data

    def refusing(handler):
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except answers.Refused as refused:
                return _error(refused.status, refused.reason)
        return wrapped

    # ------------------------------------------------------------------------------------------ pages and assets

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / PAGES[request.url.path], media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-store"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _error(404, "not found")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    # ------------------------------------------------------------------------------------------ sign-in

    def session_endpoint(role: str):
        @refusing
        async def endpoint(request: Request) -> Response:
            if not same_origin(request):
                raise answers.Refused(403, "cross-site request")
            data = await read_json(request)
            token = data.get("token")
            if not isinstance(token, str) or set(data) != {"token"}:
                raise answers.Refused(422, "expected a token")
            rater = await in_db(answers.authenticate, token, role)
            if rater is None:
                raise answers.Refused(401, "this link is not valid; ask the study organiser for yours")
            response = JSONResponse({"ok": True}, headers={"cache-control": "no-store"})
            response.set_cookie(cookie(role), token, max_age=90 * 24 * 3600, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
            return response
        return endpoint

    # ------------------------------------------------------------------------------------------ the rater's API

    @refusing
    async def get_state(request: Request) -> Response:
        rater, token = await who(request, "rater")
        if rater is None:
            raise answers.Refused(401, "not signed in; open your personal link again")
        data = await in_db(answers.state, rater)
        return JSONResponse({**data, "csrf": csrf_value(token)}, headers={"cache-control": "no-store"})

    @refusing
    async def post_score(request: Request) -> Response:
        rater, data = await write_guard(request)
        data = fields(data, {"request": str, "video": str, "criterion": str, "score": int})
        await in_db(answers.record_score, rater, data["request"], data["video"], data["criterion"],
                                data["score"])
        return JSONResponse({"ok": True}, headers={"cache-control": "no-store"})

    @refusing
    async def post_comment(request: Request) -> Response:
        rater, data = await write_guard(request)
        data = fields(data, {"request": str, "video": str, "comment": str})
        await in_db(answers.record_comment, rater, data["request"], data["video"], data["comment"])
        return JSONResponse({"ok": True}, headers={"cache-control": "no-store"})

    @refusing
    async def video(request: Request) -> Response:
        rater, _ = await who(request, "rater")
        if rater is None:
            raise answers.Refused(401, "not signed in")
        video_id = request.path_params["video"]
        if not VIDEO_ID.fullmatch(video_id):
            raise answers.Refused(404, "no such video")
        assigned = await in_db(lambda c: c.execute("SELECT 1 FROM assignments WHERE rater=? AND video=?",
                                                   (rater.id, video_id)).fetchone())
        path = media / f"{video_id}.mp4"  # video_id is 32 hex digits: no separator, no dot
        if assigned is None or path.parent != media or not path.is_file():
            raise answers.Refused(404, "no such video")
        st = os.stat(path)
        fixed = os.stat_result((st.st_mode, 0, 0, 1, 0, 0, st.st_size, MEDIA_MTIME, MEDIA_MTIME, MEDIA_MTIME))
        return FileResponse(path, media_type="video/mp4", stat_result=fixed,
                            headers={"cache-control": "private, max-age=3600"})

    # ------------------------------------------------------------------------------------------ the admin's API

    @refusing
    async def admin_progress(request: Request) -> Response:
        admin, _ = await who(request, "admin")
        if admin is None:
            raise answers.Refused(401, "not signed in as admin; open the admin link again")
        data = await in_db(answers.progress)
        return JSONResponse(data, headers={"cache-control": "no-store"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204, headers={"cache-control": "max-age=86400"})

    async def not_found(request: Request, exc) -> Response:
        return _error(getattr(exc, "status_code", 404), "not found")

    routes = [
        Route("/", page), Route("/admin", page),
        Route("/static/{name}", asset), Route("/favicon.ico", favicon),
        Route("/api/session", session_endpoint("rater"), methods=["POST"]),
        Route("/api/admin/session", session_endpoint("admin"), methods=["POST"]),
        Route("/api/state", get_state),
        Route("/api/score", post_score, methods=["POST"]),
        Route("/api/comment", post_comment, methods=["POST"]),
        Route("/api/video/{video}", video, methods=["GET", "HEAD"]),
        Route("/api/admin/progress", admin_progress),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(_SecurityHeaders)
    return app


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a ConfigError naming both (port taken, unknown address, not allowed)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"cannot listen on --host {host} --port {port}: {exc.strerror or exc}") from None
    return sock


def serve(config: ServeConfig) -> None:
    """Serve the study until interrupted (SIGINT/SIGTERM end it cleanly; every answer is already committed)."""
    import uvicorn

    app = make_app(config.study)
    db = open_study(Path(config.study))
    videos, raters = (db.execute(q).fetchone()[0] for q in ("SELECT COUNT(*) FROM videos",
                                                             "SELECT COUNT(*) FROM raters WHERE role='rater'"))
    db.close()
    sock = listen(config.host, config.port)
    if config.host not in LOCAL_HOSTS:
        log.warning("listening on %s, not only this machine: put an HTTPS proxy in front (tokens and answers "
                    "travel in clear over plain HTTP)", config.host)
    port = sock.getsockname()[1]
    print(f"ophora review: {config.study} ({videos} videos, {raters} raters) at http://{config.host}:{port}/ "
          "(rater links: 'ophora review add-rater'; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                                           date_header=False))
    with sock:
        server.run(sockets=[sock])
