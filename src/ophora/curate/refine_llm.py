"""The `openai` refiner: narrations rewritten by an LLM behind any OpenAI-compatible chat-completions endpoint.

Works with vLLM, TGI, llama.cpp's server or a hosted API (the paper used Qwen2.5-72B-Instruct). Requests run
concurrently in a thread pool; 429, 5xx, timeouts, dropped connections and malformed responses are retried
with exponential backoff; every answer is validated (one line, no preamble or refusal, bounded length) and
cached on disk, keyed by (prompt version, model, narration), so a rerun asks only what it has not asked yet.
The key comes from OPHORA_LLM_API_KEY and never reaches a log, an error message or the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ophora.curate.refine_rules import check_narrations, refine_narration
from ophora.core.endpoint import API_KEY_ENV, chat_completions_url, public_url, request_headers, scrub
from ophora.core.errors import ConfigError, EndpointError
from ophora.core.files import write_text

if TYPE_CHECKING:
    from ophora.curate.refine import RefineConfig

log = logging.getLogger(__name__)

NONE_ANSWER = "NONE"

_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|here(?:'s| is| are)|i(?:'m| am) sorry|sorry|i cannot|i can't|"
    r"i can not|i'm unable|i am unable|as an ai|unfortunately|the (?:rewritten|refined|concise) instruction)\b",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^(?:instruction|answer|output)\s*:\s*", re.IGNORECASE)


class LLMAnswerError(EndpointError):
    """The endpoint kept answering something that is not a single instruction (and on_invalid is "error")."""


class _Retryable(Exception):
    """A failure worth another try; `retry_after` is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _InvalidAnswer(_Retryable):
    """The answer was received but fails validation."""


@dataclass(frozen=True)
class Prompt:
    """The system prompt and its version: file stem plus a content hash, so any edit changes the cache key."""

    text: str
    version: str


def load_prompt(name_or_path: str) -> Prompt:
    """A packaged prompt by name (`refine_v1`) or a prompt file given by path."""
    path = Path(name_or_path)
    if path.suffix == ".txt" and path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        packaged = resources.files("ophora") / "prompts" / f"{name_or_path}.txt"
        if not packaged.is_file():
            raise ConfigError(f"refine prompt {name_or_path!r} is neither a packaged prompt nor a .txt file")
        text = packaged.read_text(encoding="utf-8")
        path = Path(f"{name_or_path}.txt")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return Prompt(text=text.strip(), version=f"{path.stem}-{digest}")


def validate_answer(content: object, max_words: int) -> str:
    """The instruction in a model's answer ("" for NONE); raises _InvalidAnswer saying what is wrong."""
    if not isinstance(content, str):
        raise _InvalidAnswer("the answer has no text content")
    text = _LABEL.sub("", content.strip().strip("*").strip()).strip().strip("\"'`“”").strip()
    if not text:
        raise _InvalidAnswer("empty answer")
    if "\n" in text:
        raise _InvalidAnswer("the answer has more than one line")
    if _PREAMBLE.match(text):
        raise _InvalidAnswer("the answer starts with a preamble or refusal")
    if text.rstrip(".").upper() == NONE_ANSWER:
        return ""
    if len(text.split()) > max_words:
        raise _InvalidAnswer(f"the answer is longer than {max_words} words")
    return text


class AnswerCache:
    """One small JSON file per (prompt version, model, narration) under `dir/<2 hex>/<sha256>.json`."""

    def __init__(self, directory: Path, prompt_version: str, model: str) -> None:
        self.dir = Path(directory)
        self.prompt_version = prompt_version
        self.model = model

    def _path(self, narration: str) -> Path:
        key = json.dumps([self.prompt_version, self.model, narration], ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.dir / digest[:2] / f"{digest}.json"

    def get(self, narration: str) -> str | None:
        """The cached instruction, or None when absent or unreadable (a broken entry is simply asked again)."""
        try:
            entry = json.loads(self._path(narration).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict):
            return None
        same = (entry.get("prompt_version"), entry.get("model"), entry.get("narration")) == (
            self.prompt_version, self.model, narration)
        return entry.get("instruction") if same and isinstance(entry.get("instruction"), str) else None

    def put(self, narration: str, instruction: str) -> None:
        path = self._path(narration)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"prompt_version": self.prompt_version, "model": self.model, "narration": narration,
                 "instruction": instruction}
        write_text(path, json.dumps(entry, ensure_ascii=False))


class OpenAIRefiner:
    """Refiner calling an OpenAI-compatible `/v1/chat/completions` endpoint."""

    name = "openai"

    def __init__(self, config: RefineConfig) -> None:
        self.config = config
        self.url = chat_completions_url(config.url)
        self.prompt = load_prompt(config.prompt)
        self.version = self.prompt.version
        self.cache = AnswerCache(config.cache_dir, self.prompt.version, config.model) if config.cache_dir else None
        self.counts = {"cached": 0, "asked": 0, "retries": 0, "invalid": 0, "fallback": 0}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable, so process pools and Ray can ship it (each process gets its own lock)."""
        return {name: value for name, value in self.__dict__.items() if name != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def summary(self) -> dict:
        """What the pipeline records: backend, model, prompt version, endpoint (no key) and counts."""
        return {"backend": self.name, "version": self.version, "model": self.config.model,
                "url": public_url(self.url), "counts": dict(self.counts)}

    def refine(self, narrations: Sequence[str]) -> list[str]:
        """One instruction per narration, same order; cached answers are reused, the rest asked concurrently."""
        texts = [" ".join(n.split()) for n in check_narrations(narrations)]
        answers: dict[str, str] = {"": ""}
        for text in dict.fromkeys(texts):
            if text and self.cache and (hit := self.cache.get(text)) is not None:
                answers[text] = hit
        todo = [t for t in dict.fromkeys(texts) if t not in answers]
        self.counts["cached"] += len(answers) - 1
        if todo:
            log.info("refining %d narrations with %s at %s (%d cached)", len(todo), self.config.model,
                     public_url(self.url), len(answers) - 1)
            answers.update(self._ask_all(todo))
        return [answers[t] for t in texts]

    def _ask_all(self, todo: list[str]) -> dict[str, str]:
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="refine")
        futures = {pool.submit(self._ask, text): text for text in todo}
        answers: dict[str, str] = {}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="refine", unit="narration"):
                answers[futures[future]] = future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return answers

    def _ask(self, narration: str) -> str:
        """Ask until a valid answer comes back; then cache it. Failing that, apply `on_invalid` or raise."""
        last: _Retryable | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._count("retries")
                delay = self._delay(attempt - 1, last)
                log.info("refine request failed (%s): retry %d/%d in %.1f s", last, attempt, self.config.retries, delay)
                time.sleep(delay)
            try:
                answer = validate_answer(self._post(narration), self.config.max_words)
            except _Retryable as failure:
                last = failure
                continue
            if self.cache:
                self.cache.put(narration, answer)
            return answer
        return self._give_up(narration, last)

    def _give_up(self, narration: str, last: _Retryable | None) -> str:
        attempts = self.config.retries + 1
        if not isinstance(last, _InvalidAnswer):
            raise EndpointError(f"{public_url(self.url)}: no answer after {attempts} attempts ({last})")
        self._count("invalid")
        if self.config.on_invalid == "error":
            raise LLMAnswerError(f"{public_url(self.url)}: no usable instruction after {attempts} attempts ({last})")
        self._count("fallback")
        log.warning("LLM answer unusable after %d attempts (%s): using the %s fallback", attempts, last,
                    self.config.on_invalid)
        return refine_narration(narration, self.config.max_words) if self.config.on_invalid == "rules" else ""

    def _delay(self, attempt: int, failure: _Retryable | None) -> float:
        """Exponential backoff with a little jitter, at least the server's Retry-After, at most max_backoff."""
        delay = self.config.backoff * 2**attempt * (1 + 0.25 * random.random())
        if failure is not None and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return min(delay, self.config.max_backoff)

    def _post(self, narration: str) -> object:
        """One chat-completions request; returns the answer's content or raises _Retryable / EndpointError."""
        body = {"model": self.config.model, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, "n": 1,
                "messages": [{"role": "system", "content": self.prompt.text},
                             {"role": "user", "content": narration}]}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=request_headers(self.config.url),
                                         method="POST")
        self._count("asked")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            self._raise_http(error)
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise _Retryable(f"timed out after {self.config.timeout:g} s" if isinstance(reason, TimeoutError)
                             else f"connection failed: {scrub(str(reason), self.config.url)}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("malformed response (not a chat-completions JSON)") from None

    def _raise_http(self, error: urllib.error.HTTPError) -> None:
        detail = scrub(error.read(300).decode("utf-8", "replace").strip(), self.config.url) if error.fp else ""
        if error.code == 429 or error.code >= 500:
            raise _Retryable(f"HTTP {error.code}", _retry_after(error.headers.get("Retry-After"))) from None
        if error.code in (401, 403):
            raise EndpointError(f"{public_url(self.url)} refused the request (HTTP {error.code}): "
                                  f"check the key in {API_KEY_ENV}") from None
        raise EndpointError(f"{public_url(self.url)} answered HTTP {error.code} (check --llm-url and "
                              f"--llm-model {self.config.model!r}): {detail}") from None

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
