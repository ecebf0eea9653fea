"""OpenAI-compatible HTTP endpoints (the LLM refiner, the VLM privacy check): addresses, headers, redaction.

The key comes from OPHORA_LLM_API_KEY (or user:password in the address) and never reaches a log, an error
message or a record: every address shown anywhere goes through `public_url`.
"""

from __future__ import annotations

import base64
import os
import urllib.parse

API_KEY_ENV = "OPHORA_LLM_API_KEY"
SECRET_QUERY_KEYS = ("key", "token", "secret", "password", "passwd", "auth", "signature", "sig", "credential")


def chat_completions_url(url: str) -> str:
    """`http://host:8000/v1` or a full `.../chat/completions` address -> the chat-completions address.

    The path is extended before the query string; user info is dropped (it travels as a header instead).
    """
    parts = urllib.parse.urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, _host(parts), path, parts.query, ""))


def _host(parts: urllib.parse.SplitResult) -> str:
    return parts.netloc.rsplit("@", 1)[-1]


def public_url(url: str) -> str:
    """The address without user info and with secret-looking query values masked, safe for logs and records."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, "***" if any(s in k.lower() for s in SECRET_QUERY_KEYS) else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit((parts.scheme, _host(parts), parts.path, urllib.parse.urlencode(query, safe="*"), ""))


def request_headers(url: str = "") -> dict[str, str]:
    """JSON request headers: the bearer key from OPHORA_LLM_API_KEY, else basic auth from `user:pass@` in `url`."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    parts = urllib.parse.urlsplit(url)
    if key := os.environ.get(API_KEY_ENV):
        headers["Authorization"] = f"Bearer {key}"
    elif parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return headers


def scrub(text: str, url: str = "") -> str:
    """Remove the key and any credentials of `url` from text that came from elsewhere (a server may echo them)."""
    parts = urllib.parse.urlsplit(url)
    secrets = [os.environ.get(API_KEY_ENV), parts.password]
    secrets += [v for k, v in urllib.parse.parse_qsl(parts.query) if any(s in k.lower() for s in SECRET_QUERY_KEYS)]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
