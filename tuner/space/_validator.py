"""Validate a parsed search-space document into a SearchSpace, naming the file in every error."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tuner.errors import SpaceError
from tuner.space._model import Branch, Prior, SearchSpace, fmt, is_int, is_number, same

PARAM_TYPES = ("float", "int", "categorical", "fixed")
TOP_LEVEL_KEYS = ("description", "settings", "params")
SETTING_KEYS = ("model", "image_size", "weights", "max_epochs")
# Each setting's test of a value the file gives, and what the message says it must be.
SETTING_RULES = {
    "model": (lambda value: isinstance(value, str) and bool(value), "a model name"),
    "image_size": (lambda value: is_int(value) and value >= 8, "an integer >= 8"),
    "weights": (lambda value: isinstance(value, str) and bool(value), "imagenet, none or a file path"),
    "max_epochs": (lambda value: is_int(value) and value >= 1, "an integer >= 1"),
}
# Values that come from the data rather than the sampler; `when` may test them.
CONTEXT_VALUES: Mapping[str, tuple[str, ...]] = {"task": ("single_label", "multi_label")}
KEYS_BY_TYPE: Mapping[str, frozenset[str]] = {
    "float": frozenset({"type", "low", "high", "log", "step", "when", "prior"}),
    "int": frozenset({"type", "low", "high", "log", "step", "when", "prior"}),
    "categorical": frozenset({"type", "choices", "when", "prior"}),
    "fixed": frozenset({"type", "value", "when"}),
}


def validate(doc: Any, *, source: str, text: str, name: str) -> SearchSpace:
    """The SearchSpace a parsed YAML document describes; SpaceError names `source` and the entry."""
    return _Validator(source).space(doc, text=text, name=name)


class _Checker:
    """What every part of the validation shares: the file's name in each error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {message}")

    def unknown_keys(self, mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        extra = [k for k in mapping if k not in allowed]
        if extra:
            raise self.fail(
                f"{where}: unknown key {fmt(extra[0])} (allowed: {', '.join(sorted(allowed))})"
            )


class _Validator(_Checker):
    """The document's top level: its keys, settings and parameters, each checked by the parts below."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.entries = _EntryChecker(source)
        self.conditions = _ConditionChecker(source)

    def space(self, doc: Any, *, text: str, name: str) -> SearchSpace:
        if not isinstance(doc, dict):
            raise self.fail(f"must be a mapping with a 'params' key, got {type(doc).__name__}")
        self.unknown_keys(doc, TOP_LEVEL_KEYS, "top level")
        raw_params = doc.get("params")
        if not isinstance(raw_params, dict) or not raw_params:
            raise self.fail("params must be a non-empty mapping of parameter names to entries")
        params = {str(p): self.branches(str(p), entry) for p, entry in raw_params.items()}
        self.conditions.check_conditions(params)
        ordered = {p: params[p] for p in self.conditions.sampling_order(params)}
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

    def settings(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(f"settings must be a mapping, got {fmt(raw)}")
        self.unknown_keys(raw, SETTING_KEYS, "settings")
        for key, (fits, wanted) in SETTING_RULES.items():
            value = raw.get(key)
            if value is not None and not fits(value):
                raise self.fail(f"settings.{key} must be {wanted}, got {fmt(value)}")
        return dict(raw)

    def branches(self, param: str, entry: Any) -> tuple[Branch, ...]:
        if param in CONTEXT_VALUES:
            raise self.fail(f"{param}: the name is reserved for a value that comes from the data")
        if isinstance(entry, list):
            if not entry:
                raise self.fail(f"{param}: needs at least one entry, got []")
            labels = [f"{param}[{i}]" for i in range(len(entry))] if len(entry) > 1 else [param]
            found = tuple(self.entries.branch(param, label, e) for label, e in zip(labels, entry))
        else:
            found = (self.entries.branch(param, param, entry),)
        self.conditions.check_compatible(param, found)
        return found


class _EntryChecker(_Checker):
    """One entry of a parameter: its type, range or choices, prior and `when` conditions."""

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
        is_num, noun = number_test(kind)
        self.required_numbers(label, entry, ("low", "high"), kind, f" for a {kind} parameter")
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

    def required_numbers(self, where: str, raw: dict, keys: tuple[str, ...], kind: str, why: str = "") -> None:
        """Each of `keys` is in `raw`, and a number of `kind` (int, or float: any number)."""
        is_num, noun = number_test(kind)
        for key in keys:
            if key not in raw:
                raise self.fail(f"{where}.{key} is required{why}")
            if not is_num(raw[key]):
                raise self.fail(f"{where}.{key} must be {noun}, got {fmt(raw[key])}")

    def range_prior(self, label: str, raw: Any, low: float, high: float, log: bool) -> Prior:
        where = f"{label}.prior"
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be a mapping with centre and spread, got {fmt(raw)}")
        self.unknown_keys(raw, ("centre", "spread"), where)
        self.required_numbers(where, raw, ("centre", "spread"), "float")
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
            if not is_number(weight) or weight < 0:
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


class _ConditionChecker(_Checker):
    """The parameters together: compatible branches, `when` conditions that name possible values,
    branches that exclude each other, and a sampling order without cycles."""

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
            if not any(same(value, p) for p in possible):
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


def number_test(kind: str) -> tuple[Callable[[Any], bool], str]:
    """The test a value of a range of `kind` passes, and its noun for messages."""
    return (is_int, "an integer") if kind == "int" else (is_number, "a number")
