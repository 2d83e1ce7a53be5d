"""Wording helpers shared by messages: counts in the right number, durations, rounded numbers, sizes in bytes."""

from __future__ import annotations

from typing import Any


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 trial`, `2 trials`, `0 trials` (nouns: an irregular plural)."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h07m`; `-` for an unknown duration."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def significant(value: Any, digits: int = 4) -> str:
    """A float at `digits` significant digits (0.4927, 0.001235, 1.2e-05); anything else as str() has it.

    Readers compare trials at a glance: the 17 digits of a sampled float say nothing more.
    """
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
