"""The search space's data model: a SearchSpace's parameters, their Branches and Priors, sampled on a trial."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def fmt(value: Any) -> str:
    """Render a value the way it would be written in YAML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Prior:
    """Expert belief about a branch: a centre and spread (decades when log) or a weight per choice."""

    centre: float | None = None
    spread: float | None = None
    weights: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.weights:
            return {"weights": list(self.weights)}
        return {"centre": self.centre, "spread": self.spread}


@dataclass(frozen=True)
class Branch:
    """One entry of a parameter: a distribution (or fixed value) and when it applies."""

    param: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    prior: Prior | None = None

    @property
    def fixed(self) -> bool:
        return self.type == "fixed"

    def when_dict(self) -> dict[str, list[Any]] | None:
        return {k: list(v) for k, v in self.when} or None

    def applies(self, values: Mapping[str, Any]) -> bool:
        """True when every `when` condition holds; an absent (inactive) parameter fails it."""
        return all(
            key in values and any(same(values[key], a) for a in allowed) for key, allowed in self.when
        )

    def distribution(self) -> BaseDistribution:
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        # A fixed value is shown as a one-choice categorical; it is never suggested.
        return CategoricalDistribution((self.value,))

    def contains(self, value: Any) -> bool:
        if self.type in ("float", "int"):
            return is_number(value) and self.low <= value <= self.high
        return any(same(value, v) for v in self.possible_values())

    def possible_values(self) -> tuple[Any, ...]:
        return (self.value,) if self.fixed else self.choices

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.param, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.param, self.low, self.high, step=self.step or 1, log=self.log)
        if self.type == "categorical":
            return trial.suggest_categorical(self.param, self.choices)
        return self.value


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: parameters in sampling order, plus fixed study settings."""

    name: str
    source: str
    text: str
    description: str
    settings: Mapping[str, Any]
    params: Mapping[str, tuple[Branch, ...]] = field(default_factory=dict)

    def sample(self, trial: optuna.trial.BaseTrial, context: Mapping[str, Any]) -> dict[str, Any]:
        """Suggest every active parameter on `trial`; inactive ones are never suggested."""
        values: dict[str, Any] = dict(context)
        for name, branches in self.params.items():
            branch = next((b for b in branches if b.applies(values)), None)
            if branch is not None:
                values[name] = branch.suggest(trial)
        return {k: v for k, v in values.items() if k in self.params}

    def fixed_values(self, params: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of a sampled config that come from `fixed` branches."""
        out = {}
        for name, value in params.items():
            branch = self.active_branch(name, {**context, **params})
            if branch is not None and branch.fixed:
                out[name] = value
        return out

    def active_branch(self, name: str, values: Mapping[str, Any]) -> Branch | None:
        return next((b for b in self.params.get(name, ()) if b.applies(values)), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": {name: [_branch_json(b) for b in branches] for name, branches in self.params.items()},
        }

    @property
    def has_priors(self) -> bool:
        return any(b.prior is not None for branches in self.params.values() for b in branches)


def _branch_json(branch: Branch) -> dict[str, Any]:
    shown = {
        "distribution": json.loads(optuna.distributions.distribution_to_json(branch.distribution())),
        "when": branch.when_dict(),
    }
    if branch.prior is not None:
        shown["prior"] = branch.prior.to_json()
    return shown


def same(a: Any, b: Any) -> bool:
    # YAML gives `true` and `1` as equal Python values; a condition must match the type too.
    return type(a) is type(b) and a == b


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
