"""Stable seeds derived from the study seed, a trial's lineage and an epoch (no torch, no Optuna)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from the study seed, trial lineage and epoch."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
