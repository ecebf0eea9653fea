"""Derived seeds: one random draw's seed from the parts that identify it, the same on any rank or resume."""

from __future__ import annotations

import hashlib


def derived_seed(*parts: object) -> int:
    """A 63-bit seed determined by `parts` alone (e.g. run seed, clip id, index)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
