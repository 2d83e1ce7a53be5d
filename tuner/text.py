"""Wording helpers shared by messages: counts with their noun in the right number."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 trial`, `2 trials`, `0 trials` (nouns: an irregular plural)."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
