"""Narration refining: a surgeon's narration -> a concise generation instruction, behind one interface.

    refiner = make_refiner(RefineConfig(backend="rules"))   # or backend="openai", url=..., model=..., cache_dir=...
    instructions = refiner.refine(narrations)                # same length and order; "" = nothing visible
    refiner.name, refiner.version, refiner.summary()         # for the run's summary.json

Backends: `rules` (offline, deterministic; refine_rules.py) and `openai` (any OpenAI-compatible chat endpoint;
refine_llm.py). The CLI flags (--refiner, --llm-*) come from the fields (core/config.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ophora.curate.refine_llm import OpenAIRefiner
from ophora.curate.refine_rules import RulesRefiner
from ophora.core.config import option
from ophora.core.errors import ConfigError

GROUP = "narration refining"
BACKENDS = ("rules", "openai")
ON_INVALID = ("rules", "empty", "error")


@dataclass
class RefineConfig:
    """Settings of the refiner; the `openai` fields are ignored by `rules`."""

    backend: str = option("rules", "rules: offline and deterministic; openai: an OpenAI-compatible chat endpoint",
                          flag="--refiner", choices=BACKENDS, group=GROUP)
    max_words: int = option(60, "longest instruction kept (T5 in CogVideoX reads at most 226 tokens)",
                            flag="--instruction-max-words", group=GROUP)
    url: str | None = option(None, "e.g. http://localhost:8000/v1 (key from OPHORA_LLM_API_KEY)", flag="--llm-url",
                             group=GROUP)
    model: str | None = option(None, "model name as served, e.g. Qwen/Qwen2.5-72B-Instruct", flag="--llm-model",
                               group=GROUP)
    prompt: str = option("refine_v1", "packaged prompt name or a .txt prompt file (its hash is part of the version)",
                         flag="--llm-prompt", group=GROUP)
    timeout: float = option(60.0, "seconds per request", flag="--llm-timeout", group=GROUP)
    retries: int = option(4, "extra attempts after a failed one (429, 5xx, timeout, malformed or invalid answer)",
                          flag="--llm-retries", group=GROUP)
    backoff: float = 1.0  # first retry delay in seconds, doubled each retry
    max_backoff: float = 30.0
    concurrency: int = option(8, "requests in flight", flag="--llm-concurrency", group=GROUP)
    cache_dir: Path | None = option(None, "answer cache folder (curate's default: OUT/refine_cache)", flag="--llm-cache",
                                    group=GROUP)
    temperature: float = 0.0
    max_tokens: int = option(128, "longest answer asked for", flag="--llm-max-tokens", group=GROUP)
    on_invalid: str = option("rules", "what to do with a narration whose answers stay unusable after the retries",
                             flag="--llm-on-invalid", choices=ON_INVALID, group=GROUP)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None
        self.check()

    def check(self) -> None:
        """Catch every mistake before any request, naming the setting and its allowed values."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"refiner backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_words < 1:
            raise ConfigError(f"instruction max_words must be >= 1, got {self.max_words}")
        if self.backend != "openai":
            return
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"the openai refiner needs --llm-url http(s)://HOST[:PORT]/v1, got {self.url!r}")
        if not self.model:
            raise ConfigError("the openai refiner needs --llm-model (the model name the server serves)")
        if self.on_invalid not in ON_INVALID:
            raise ConfigError(f"--llm-on-invalid must be one of {', '.join(ON_INVALID)}, got {self.on_invalid!r}")
        for name in ("timeout", "concurrency", "max_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"refiner {name} must be > 0, got {getattr(self, name)}")
        for name in ("retries", "backoff", "max_backoff", "temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"refiner {name} must be >= 0, got {getattr(self, name)}")


class Refiner(Protocol):
    """What every backend offers."""

    name: str
    version: str

    def refine(self, narrations: Sequence[str]) -> list[str]: ...

    def summary(self) -> dict: ...


def make_refiner(config: RefineConfig | None = None) -> Refiner:
    """The refiner `config` asks for (default: rules)."""
    config = config or RefineConfig()
    if config.backend == "openai":
        return OpenAIRefiner(config)
    return RulesRefiner(config.max_words)
