"""A branch of a space in words: its range, its prior and when it applies.

Each takes `show`, how one value is written: exactly as YAML has it (fmt, the default: error
messages compare values) or rounded to 4 significant digits (for readers: the study's note).
"""

from __future__ import annotations

from typing import Any, Callable

from tuner.space._model import Branch, fmt
from tuner.text import significant

Show = Callable[[Any], str]


def rounded(value: Any) -> str:
    """fmt, with floats at 4 significant digits (also inside lists)."""
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(rounded(v) for v in value) + "]"
    return fmt(value)


def branch_range(branch: Branch, show: Show = fmt) -> str:
    if branch.type in ("float", "int"):
        text = f"{show(branch.low)} .. {show(branch.high)}"
        if branch.log:
            text += " (log)"
        if branch.step is not None:
            text += f" step {show(branch.step)}"
        return text
    if branch.type == "categorical":
        return show(list(branch.choices))
    return show(branch.value)


def branch_prior(branch: Branch, show: Show = fmt) -> str:
    """The branch's prior as the space file states it: centre ± spread, or weight per choice."""
    prior = branch.prior
    if prior is None:
        return "-"
    if prior.weights:
        return ", ".join(f"{show(c)}: {show(w).removesuffix('.0')}" for c, w in zip(branch.choices, prior.weights))
    unit = " decades" if branch.log else ""
    return f"{show(prior.centre)} ± {show(prior.spread)}{unit}"


def branch_when(branch: Branch, show: Show = fmt) -> str:
    parts = [f"{k} in {show(list(v))}" if len(v) > 1 else f"{k} = {show(v[0])}" for k, v in branch.when]
    return " and ".join(parts) or "always"
