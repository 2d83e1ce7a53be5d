"""A branch of a space in words: its range, its prior and when it applies."""

from __future__ import annotations

from tuner.space._model import Branch, fmt


def branch_range(branch: Branch) -> str:
    if branch.type in ("float", "int"):
        text = f"{fmt(branch.low)} .. {fmt(branch.high)}"
        if branch.log:
            text += " (log)"
        if branch.step is not None:
            text += f" step {fmt(branch.step)}"
        return text
    if branch.type == "categorical":
        return fmt(list(branch.choices))
    return fmt(branch.value)


def branch_prior(branch: Branch) -> str:
    """The branch's prior as the space file states it: centre ± spread, or weight per choice."""
    prior = branch.prior
    if prior is None:
        return "-"
    if prior.weights:
        return ", ".join(f"{fmt(c)}: {fmt(w).removesuffix('.0')}" for c, w in zip(branch.choices, prior.weights))
    unit = " decades" if branch.log else ""
    return f"{fmt(prior.centre)} ± {fmt(prior.spread)}{unit}"


def branch_when(branch: Branch) -> str:
    parts = [f"{k} in {fmt(list(v))}" if len(v) > 1 else f"{k} = {fmt(v[0])}" for k, v in branch.when]
    return " and ".join(parts) or "always"
