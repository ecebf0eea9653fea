"""Version records: what every stage writes next to its output, so a result says what made it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ophora import __version__

CORE = ("torch", "diffusers", "transformers", "av")


def versions(*packages: str) -> dict[str, str]:
    """ophora's version and that of each installed package among CORE and `packages` (absent ones left out)."""
    found = {"ophora": __version__}
    for name in dict.fromkeys((*CORE, *packages)):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
