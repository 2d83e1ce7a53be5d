"""Search-space files: load, validate, and sample them on an Optuna trial."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.errors import SpaceError

PARAM_TYPES = ("float", "int", "categorical", "fixed")
TOP_LEVEL_KEYS = ("description", "settings", "params")
SETTING_KEYS = ("model", "image_size", "weights", "max_epochs")
# Values that come from the data rather than the sampler; `when` may test them.
CONTEXT_VALUES: Mapping[str, tuple[str, ...]] = {"task": ("single_label", "multi_label")}
KEYS_BY_TYPE: Mapping[str, frozenset[str]] = {
    "float": frozenset({"type", "low", "high", "log", "step", "when", "prior"}),
    "int": frozenset({"type", "low", "high", "log", "step", "when", "prior"}),
    "categorical": frozenset({"type", "choices", "when", "prior"}),
    "fixed": frozenset({"type", "value", "when"}),
}


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
            key in values and any(_same(values[key], a) for a in allowed) for key, allowed in self.when
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
            return _is_number(value) and self.low <= value <= self.high
        return any(_same(value, v) for v in self.possible_values())

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


def shipped_spaces_dir() -> Path:
    """The `search_spaces/` folder shipped beside the package (overridable for deployments)."""
    override = os.environ.get("TUNER_SPACES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "search_spaces"


def shipped_spaces() -> list[Path]:
    folder = shipped_spaces_dir()
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_space(ref: str) -> Path:
    """A FILE path as given, or NAME of a shipped space (`default` -> search_spaces/default.yaml)."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.suffix in ("", ".yaml", ".yml") and os.sep not in ref:
        shipped = shipped_spaces_dir() / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    names = ", ".join(p.stem for p in shipped_spaces()) or "none"
    raise SpaceError(f"no search space file or shipped space named {ref!r} (shipped: {names})")


def load_space(ref: str) -> SearchSpace:
    path = resolve_space(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path.name}: cannot read file: {exc}") from None
    return parse_space(text, source=path.name, name=path.stem)


def parse_space(text: str, *, source: str, name: str) -> SearchSpace:
    """Parse and validate YAML text; `source` names the file in every error message."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{source}: invalid YAML{where}: {problem}") from None
    return _Validator(source).space(doc, text=text, name=name)


class _Validator:
    """Turns a parsed YAML document into a SearchSpace, naming the file in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {message}")

    def space(self, doc: Any, *, text: str, name: str) -> SearchSpace:
        if not isinstance(doc, dict):
            raise self.fail(f"must be a mapping with a 'params' key, got {type(doc).__name__}")
        self.unknown_keys(doc, TOP_LEVEL_KEYS, "top level")
        raw_params = doc.get("params")
        if not isinstance(raw_params, dict) or not raw_params:
            raise self.fail("params must be a non-empty mapping of parameter names to entries")
        params = {str(p): self.branches(str(p), entry) for p, entry in raw_params.items()}
        self.check_conditions(params)
        ordered = {p: params[p] for p in self.sampling_order(params)}
        description = doc.get("description") or ""
        if not isinstance(description, str):
            raise self.fail(f"description must be text, got {fmt(description)}")
        return SearchSpace(
            name=name,
            source=self.source,
            text=text,
            description=description.strip(),
            settings=self.settings(doc.get("settings") or {}),
            params=ordered,
        )

    def unknown_keys(self, mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        extra = [k for k in mapping if k not in allowed]
        if extra:
            raise self.fail(
                f"{where}: unknown key {fmt(extra[0])} (allowed: {', '.join(sorted(allowed))})"
            )

    def settings(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(f"settings must be a mapping, got {fmt(raw)}")
        self.unknown_keys(raw, SETTING_KEYS, "settings")
        model = raw.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise self.fail(f"settings.model must be a model name, got {fmt(model)}")
        size = raw.get("image_size")
        if size is not None and (not _is_int(size) or size < 8):
            raise self.fail(f"settings.image_size must be an integer >= 8, got {fmt(size)}")
        weights = raw.get("weights")
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise self.fail(f"settings.weights must be imagenet, none or a file path, got {fmt(weights)}")
        cap = raw.get("max_epochs")
        if cap is not None and (not _is_int(cap) or cap < 1):
            raise self.fail(f"settings.max_epochs must be an integer >= 1, got {fmt(cap)}")
        return dict(raw)

    def branches(self, param: str, entry: Any) -> tuple[Branch, ...]:
        if param in CONTEXT_VALUES:
            raise self.fail(f"{param}: the name is reserved for a value that comes from the data")
        if isinstance(entry, list):
            if not entry:
                raise self.fail(f"{param}: needs at least one entry, got []")
            labels = [f"{param}[{i}]" for i in range(len(entry))] if len(entry) > 1 else [param]
            found = tuple(self.branch(param, label, e) for label, e in zip(labels, entry))
        else:
            found = (self.branch(param, param, entry),)
        self.check_compatible(param, found)
        return found

    def branch(self, param: str, label: str, entry: Any) -> Branch:
        if not isinstance(entry, dict):
            raise self.fail(f"{label}: must be a mapping with a 'type', got {fmt(entry)}")
        kind = entry.get("type")
        if kind not in PARAM_TYPES:
            raise self.fail(f"{label}.type must be one of {', '.join(PARAM_TYPES)}, got {fmt(kind)}")
        self.unknown_keys(entry, KEYS_BY_TYPE[kind], f"{label} ({kind})")
        when = self.when(label, entry.get("when"))
        if kind == "categorical":
            choices = self.choices(label, entry.get("choices"))
            prior = self.choice_prior(label, entry["prior"], choices) if "prior" in entry else None
            return Branch(param, kind, choices=choices, when=when, prior=prior)
        if kind == "fixed":
            if "value" not in entry:
                raise self.fail(f"{label}.value is required for a fixed parameter")
            return Branch(param, kind, value=self.scalar(f"{label}.value", entry["value"]), when=when)
        return self.numeric(param, label, kind, entry, when)

    def numeric(self, param: str, label: str, kind: str, entry: dict, when: tuple) -> Branch:
        is_num = _is_int if kind == "int" else _is_number
        noun = "an integer" if kind == "int" else "a number"
        for key in ("low", "high"):
            if key not in entry:
                raise self.fail(f"{label}.{key} is required for a {kind} parameter")
            if not is_num(entry[key]):
                raise self.fail(f"{label}.{key} must be {noun}, got {fmt(entry[key])}")
        low, high = entry["low"], entry["high"]
        log, step = entry.get("log", False), entry.get("step")
        if not isinstance(log, bool):
            raise self.fail(f"{label}.log must be true or false, got {fmt(log)}")
        if low > high:
            raise self.fail(f"{label}.low must be <= high ({fmt(high)}), got {fmt(low)}")
        if log and low <= 0:
            raise self.fail(f"{label}.low must be > 0 when log is true, got {fmt(low)}")
        if step is not None:
            if not is_num(step) or step <= 0:
                raise self.fail(f"{label}.step must be {noun} > 0, got {fmt(step)}")
            if log:
                raise self.fail(f"{label}.step cannot be combined with log: true, got step {fmt(step)}")
        cast = int if kind == "int" else float
        prior = self.range_prior(label, entry["prior"], low, high, log) if "prior" in entry else None
        return Branch(
            param, kind, low=cast(low), high=cast(high), log=log,
            step=None if step is None else cast(step), when=when, prior=prior,
        )

    def range_prior(self, label: str, raw: Any, low: float, high: float, log: bool) -> Prior:
        where = f"{label}.prior"
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be a mapping with centre and spread, got {fmt(raw)}")
        self.unknown_keys(raw, ("centre", "spread"), where)
        for key in ("centre", "spread"):
            if key not in raw:
                raise self.fail(f"{where}.{key} is required")
            if not _is_number(raw[key]):
                raise self.fail(f"{where}.{key} must be a number, got {fmt(raw[key])}")
        centre, spread = raw["centre"], raw["spread"]
        if not low <= centre <= high:
            raise self.fail(f"{where}.centre must lie in the range {fmt(low)} .. {fmt(high)}, got {fmt(centre)}")
        if spread <= 0:
            unit = " (in decades, as log is true)" if log else ""
            raise self.fail(f"{where}.spread must be > 0{unit}, got {fmt(spread)}")
        return Prior(centre=centre, spread=spread)

    def choice_prior(self, label: str, raw: Any, choices: tuple[Any, ...]) -> Prior:
        where = f"{label}.prior"
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be a mapping with weights, got {fmt(raw)}")
        self.unknown_keys(raw, ("weights",), where)
        weights = raw.get("weights")
        if not isinstance(weights, list) or len(weights) != len(choices):
            raise self.fail(
                f"{where}.weights must be a list of one weight per choice ({len(choices)}), got {fmt(weights)}"
            )
        for weight in weights:
            if not _is_number(weight) or weight < 0:
                raise self.fail(f"{where}.weights must be numbers >= 0, got {fmt(weight)} in {fmt(weights)}")
        if not any(weights):
            raise self.fail(f"{where}.weights must not all be 0, got {fmt(weights)}")
        return Prior(weights=tuple(float(w) for w in weights))

    def choices(self, label: str, raw: Any) -> tuple[Any, ...]:
        if not isinstance(raw, list):
            raise self.fail(f"{label}.choices must be a list, got {fmt(raw)}")
        if not raw:
            raise self.fail(f"{label}.choices must not be empty, got []")
        values = tuple(self.scalar(f"{label}.choices", c) for c in raw)
        if len(set(map(repr, values))) != len(values):
            raise self.fail(f"{label}.choices must not repeat a value, got {fmt(list(values))}")
        return values

    def scalar(self, where: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(f"{where} must be finite, got {fmt(value)}")
            return value
        raise self.fail(f"{where} must hold numbers, strings, booleans or null, got {fmt(value)}")

    def when(self, label: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict) or not raw:
            raise self.fail(f"{label}.when must map parameter names to a value or list, got {fmt(raw)}")
        out = []
        for key, allowed in raw.items():
            values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
            if not values:
                raise self.fail(f"{label}.when.{key} must name at least one value, got []")
            out.append((str(key), values))
        return tuple(out)

    def check_compatible(self, param: str, branches: tuple[Branch, ...]) -> None:
        # Optuna's storage rejects one name with two distribution kinds, two log settings
        # or two categorical choice lists; catch that here instead of mid-study.
        sampled = [b for b in branches if not b.fixed]
        for other in sampled[1:]:
            first = sampled[0]
            if other.type != first.type:
                raise self.fail(
                    f"{param}: every sampled branch must have the same type, got {first.type} and {other.type}"
                )
            if other.log != first.log:
                raise self.fail(f"{param}: every branch must use the same log setting")
            if other.choices != first.choices:
                raise self.fail(
                    f"{param}: every categorical branch must have the same choices, "
                    f"got {fmt(list(first.choices))} and {fmt(list(other.choices))}"
                )

    def check_conditions(self, params: Mapping[str, tuple[Branch, ...]]) -> None:
        for param, branches in params.items():
            for index, branch in enumerate(branches):
                label = f"{param}[{index}]" if len(branches) > 1 else param
                for key, allowed in branch.when:
                    self.check_condition(label, key, allowed, params)
            self.check_exclusive(param, branches)

    def check_condition(self, label: str, key: str, allowed: tuple, params: Mapping) -> None:
        if key in CONTEXT_VALUES:
            possible: tuple[Any, ...] = CONTEXT_VALUES[key]
        elif key in params:
            if any(b.type in ("float", "int") for b in params[key]):
                raise self.fail(f"{label}.when.{key}: can only test a categorical or fixed parameter")
            possible = tuple(v for b in params[key] for v in b.possible_values())
        else:
            known = ", ".join([*params, *CONTEXT_VALUES])
            raise self.fail(f"{label}.when names unknown parameter {fmt(key)} (known: {known})")
        for value in allowed:
            if not any(_same(value, p) for p in possible):
                raise self.fail(
                    f"{label}.when.{key}: {fmt(value)} is not a possible value of {key} "
                    f"(possible: {fmt(list(dict.fromkeys(possible)))})"
                )

    def check_exclusive(self, param: str, branches: tuple[Branch, ...]) -> None:
        # Two branches are exclusive when some condition key they share has disjoint values.
        for i, first in enumerate(branches):
            for j in range(i + 1, len(branches)):
                second = dict(branches[j].when)
                if not any(
                    key in second and not set(map(repr, values)) & set(map(repr, second[key]))
                    for key, values in first.when
                ):
                    raise self.fail(
                        f"{param}[{i}] and {param}[{j}] can both apply; give them 'when' "
                        "conditions on the same parameter with different values"
                    )

    def sampling_order(self, params: Mapping[str, tuple[Branch, ...]]) -> list[str]:
        """Parameters ordered so that each comes after every parameter its `when` tests."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = " -> ".join([*chain[chain.index(name):], name])
                raise self.fail(f"'when' conditions form a cycle: {cycle}")
            state[name] = "visiting"
            for branch in params[name]:
                for key, _ in branch.when:
                    if key in params:
                        visit(key, [*chain, name])
            state[name] = "done"
            order.append(name)

        for name in params:
            visit(name, [])
        return order


def _same(a: Any, b: Any) -> bool:
    # YAML gives `true` and `1` as equal Python values; a condition must match the type too.
    return type(a) is type(b) and a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
