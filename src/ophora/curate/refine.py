"""Narration refining: a surgeon's narration -> a concise generation instruction, behind one interface.

    refiner = make_refiner(RefineConfig(backend="rules"))   # or backend="openai", url=..., model=..., cache_dir=...
    instructions = refiner.refine(narrations)                # same length and order; "" = nothing visible
    refiner.name, refiner.version, refiner.summary()         # for the run's summary.json

Backends: `rules` (offline, deterministic; refine_rules.py) and `openai` (any OpenAI-compatible chat endpoint;
refine_llm.py). For a CLI: call `add_refine_arguments(parser)` when building the subcommand's parser and
`refine_config_from_args(args, default_cache_dir=OUT / "refine_cache")` when running it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ophora.curate.refine_llm import OpenAIRefiner
from ophora.curate.refine_rules import RulesRefiner
from ophora.errors import ConfigError

BACKENDS = ("rules", "openai")
ON_INVALID = ("rules", "empty", "error")


@dataclass
class RefineConfig:
    """Settings of the refiner; the `openai` fields are ignored by `rules`."""

    backend: str = "rules"
    max_words: int = 60  # longest instruction kept (T5 in CogVideoX reads at most 226 tokens)
    url: str | None = None  # e.g. http://localhost:8000/v1 (vLLM) or a full .../chat/completions address
    model: str | None = None  # e.g. Qwen/Qwen2.5-72B-Instruct, as the server names it
    prompt: str = "refine_v1"  # packaged prompt name or path to a .txt prompt; its hash is part of the version
    timeout: float = 60.0  # seconds per request
    retries: int = 4  # extra attempts after a failed one (429, 5xx, timeout, malformed or invalid answer)
    backoff: float = 1.0  # first retry delay in seconds, doubled each retry
    max_backoff: float = 30.0
    concurrency: int = 8  # requests in flight
    cache_dir: Path | None = None  # answers cached here; None: no cache
    temperature: float = 0.0
    max_tokens: int = 128
    on_invalid: str = "rules"  # after retries, an unusable answer -> rules refiner / "" / LLMAnswerError

    def __post_init__(self) -> None:
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
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)


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


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the refiner's flags (--refiner, --llm-*) to a subcommand's parser."""
    group = parser.add_argument_group("narration refining")
    group.add_argument("--refiner", choices=BACKENDS, default="rules",
                       help="rules: offline and deterministic; openai: an OpenAI-compatible chat endpoint")
    group.add_argument("--instruction-max-words", type=int, default=60)
    group.add_argument("--llm-url", help="e.g. http://localhost:8000/v1 (key from OPHORA_LLM_API_KEY)")
    group.add_argument("--llm-model", help="model name as served, e.g. Qwen/Qwen2.5-72B-Instruct")
    group.add_argument("--llm-prompt", default="refine_v1", help="packaged prompt name or a .txt prompt file")
    group.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--llm-retries", type=int, default=4)
    group.add_argument("--llm-concurrency", type=int, default=8, help="requests in flight")
    group.add_argument("--llm-max-tokens", type=int, default=128)
    group.add_argument("--llm-cache", help="answer cache folder (default: chosen by the command)")
    group.add_argument("--llm-on-invalid", choices=ON_INVALID, default="rules",
                       help="what to do with a narration whose answers stay unusable after the retries")


def refine_config_from_args(args: argparse.Namespace, default_cache_dir: Path | None = None) -> RefineConfig:
    """The RefineConfig for flags added by `add_refine_arguments`."""
    cache = args.llm_cache or default_cache_dir
    return RefineConfig(
        backend=args.refiner, max_words=args.instruction_max_words, url=args.llm_url, model=args.llm_model,
        prompt=args.llm_prompt, timeout=args.llm_timeout, retries=args.llm_retries,
        concurrency=args.llm_concurrency, max_tokens=args.llm_max_tokens,
        cache_dir=Path(cache) if cache else None, on_invalid=args.llm_on_invalid,
    )
