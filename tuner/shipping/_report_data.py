"""What `tuner report` shows, read from a study: finished trials, table rows, importances, key parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import is_maximized, ranked
from tuner.service import all_params
from tuner.text import plural

# Optuna 5's default importance evaluator (PED-ANOVA) returns equal, meaningless importances
# for fewer than 2 completed trials with a finite value (its `len(trials) <= 1` case) ...
MIN_COMPLETED = 2
# ... and compares the top 10% of the completed trials with all of them: below 10 that top is
# the single best trial, so the importances are mostly noise. The page says so.
FEW_TRIALS = 10
# The parallel coordinates draw this many parameters (more make unreadable, crossing lines), and
# the trial table shows them as its columns (more do not fit a screen's width).
KEY_PARAMS = 5
# Before importances exist, the parameters the transfer-learning advice says matter most.
USUALLY_IMPORTANT = ("freeze", "lr", "backbone_lr", "optimizer", "weight_decay", "batch_size", "dropout",
                     "scheduler", "label_smoothing")


class NotAvailable(Exception):
    """Too few trials for this plot."""


@dataclass(frozen=True)
class Finished:
    """A finished trial as the plots see it: its value (a pruned one's last reported value) and curve."""

    number: int
    state: TrialState
    value: float | None
    curve: tuple[tuple[int, float], ...]
    params: dict[str, Any]
    stop_reason: str | None
    # The value the trial competes for the study's best with (a pruned trial's best epoch's,
    # not the last one its curve ends at), None if it does not; and whether it is the best.
    counted: float | None = None
    best: bool = False

    @classmethod
    def of(cls, trial: FrozenTrial, counted: float | None = None, best: bool = False) -> "Finished":
        curve = tuple(sorted((int(k), float(v)) for k, v in trial.intermediate_values.items()))
        value = trial.value if trial.state == TrialState.COMPLETE else (curve[-1][1] if curve else None)
        return cls(trial.number, trial.state, value, curve, all_params(trial), trial.user_attrs.get("stop_reason"),
                   counted, best)


def finished_trials(study: optuna.Study) -> list[Finished]:
    """The finished trials, the study's best and each trial's counted value as tuner.search ranks them."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    order = ranked(trials, is_maximized(study))
    counted = {t.number: value for value, t in order}
    best = order[0][1].number if order else None
    return [Finished.of(t, counted.get(t.number), t.number == best) for t in trials]


def best_number(trials: Sequence[Finished], maximize: bool) -> int | None:
    """The study's best trial, as finished_trials was told it (`maximize` was the study's there)."""
    return next((t.number for t in trials if t.best), None)


@dataclass(frozen=True)
class Row:
    """One trial in the page's table: any state, its value (a pruned one's last report) and epochs."""

    number: int
    state: str
    value: float | None
    last_reported: bool  # the value is a pruned or failed trial's last epoch, not a final value
    epochs: int | None
    stop_reason: str
    params: dict[str, Any]

    @classmethod
    def of(cls, trial: FrozenTrial) -> "Row":
        reported = sorted(trial.intermediate_values.items())
        final = trial.state == TrialState.COMPLETE and trial.value is not None
        value = trial.value if final else (reported[-1][1] if reported else None)
        epochs = trial.user_attrs.get("epochs_run", reported[-1][0] if reported else None)
        reason = trial.user_attrs.get("stop_reason") or ("" if final else trial.state.name.lower())
        return cls(trial.number, trial.state.name.lower(), value, not final and value is not None,
                   epochs, str(reason), all_params(trial))


def table_rows(study: optuna.Study) -> list[Row]:
    return [Row.of(t) for t in study.get_trials(deepcopy=False)]


@dataclass(frozen=True)
class Importances:
    """Parameter importances (most important first), or why there are none yet."""

    values: dict[str, float]
    completed: int
    unavailable: str = ""  # why not, when values is empty


def measure_importances(study: optuna.Study,
                        compute: Callable[[optuna.Study], dict] = optuna.importance.get_param_importances
                        ) -> Importances:
    """Optuna's importances over the completed trials; unavailable (with how many more trials) when too few."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    count = len(complete)
    if count < MIN_COMPLETED:
        return Importances({}, count, f"needs {plural(MIN_COMPLETED - count, 'more completed trial')} "
                                      f"(Optuna's importance evaluator needs at least {MIN_COMPLETED}, "
                                      f"this study has {count})")
    if len({t.value for t in complete}) < 2:
        # PED-ANOVA then returns equal importances: it cannot tell the best trials from the rest.
        return Importances({}, count, f"all {count} completed trials have the same value; importances need a "
                                      "completed trial with a different one")
    try:
        values = compute(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        if not too_few_trials(exc, study):
            raise  # a real error (a broken study, a bug) must not read as "come back later"
        return Importances({}, count, str(exc))
    if not values:
        return Importances({}, count, "no parameter varies across the completed trials")
    return Importances(dict(values), count)


def too_few_trials(exc: Exception, study: optuna.Study) -> bool:
    """Whether an importance error means the study has too few (or too uniform) trials for it yet.

    Decided by the study, not by the error's type: a ValueError or ZeroDivisionError counts
    only while fewer than MIN_COMPLETED trials have completed (with more, it is a real error
    and is raised). fANOVA (an evaluator one may pass) raises a RuntimeError when every trial
    has the same value; any other RuntimeError is real.
    """
    if isinstance(exc, RuntimeError):
        return "zero total variance" in str(exc)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return len(completed) < MIN_COMPLETED


def varying(trials: Sequence[Finished]) -> list[str]:
    """The parameters that took more than one value across these trials (fixed ones say nothing)."""
    names = sorted({k for t in trials for k in t.params})
    return [n for n in names if len({repr(t.params[n]) for t in trials if n in t.params}) > 1]


def key_params(trials: Sequence[Finished], importances: Importances, limit: int) -> list[str]:
    """The `limit` parameters worth a column or an axis: most important first, else the usual suspects."""
    names = varying(trials)
    if importances.values:
        ranked = [n for n in importances.values if n in names]
    else:
        ranked = [n for n in USUALLY_IMPORTANT if n in names]
    return (ranked + [n for n in names if n not in ranked])[:limit]
