"""Wording helpers shared by messages: counts with their noun in the right number, numbers at a few digits, sizes in bytes."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 trial`, `2 trials`, `0 trials` (nouns: an irregular plural)."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def significant(value: object, digits: int = 4) -> str:
    """A float at `digits` significant digits (`0.4927`, `1.235e-05`); anything else as str()."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def byte_size(count: float) -> str:
    """`512 B`, `1.5 GiB`, `49.0 TiB`: binary units, as --memory-limit's GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count /= 1024
        power += 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"
