"""The study's best trial: the best epoch of any trial that completed or that the pruner stopped.

Every reader of "the best" (`tuner best`, `status`, `studies`, the worker's log and closing
summary, the report, `retrain`, the kept weights and the dashboard's best model) asks here,
so that they all name the same trial.
"""

from __future__ import annotations

import math
from typing import Iterable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# A trial's best epoch's metric, recorded by the objective for every trial that trained:
# a pruned trial has no value of its own in Optuna.
BEST_VALUE_ATTR = "best_value"
# The only stop reason of a PRUNED trial whose epochs count. Diverged and out-of-memory
# trials end PRUNED too (so that the budget counts them), but their metric may be meaningless.
COUNTED_PRUNED = "pruned"


def best_value_of(trial: FrozenTrial, maximize: bool = True) -> float | None:
    """The metric of the trial's best epoch if that epoch counts for the study's best, else None.

    A completed trial's value is its best epoch's. A trial the pruner stopped was measured on
    val the same way up to its last epoch, and `retrain` reproduces its best epoch (its params
    for `best_epoch` epochs): on few validation images ASHA prunes on noise, and a trial
    whose early epoch beat every completed trial used to be lost.
    """
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state != TrialState.PRUNED or trial.user_attrs.get("stop_reason") != COUNTED_PRUNED:
        return None
    value = trial.user_attrs.get(BEST_VALUE_ATTR)
    if value is not None:
        return value
    # A trial recorded before best_value existed: its history (else its reports) has every epoch.
    epochs = epoch_metrics(trial)
    return (max if maximize else min)(epochs.values()) if epochs else None


def epoch_metrics(trial: FrozenTrial) -> dict[int, float]:
    """epoch -> the metric the trial measured then (its history, else its reports to Optuna), finite ones only."""
    history = trial.user_attrs.get("history") or []
    metrics = {int(row["epoch"]): row["metric"] for row in history} or dict(trial.intermediate_values)
    return {epoch: m for epoch, m in metrics.items() if isinstance(m, (int, float)) and math.isfinite(m)}


def rank(value: float, complete: bool, number: int, maximize: bool) -> tuple[float, bool, int]:
    """The sort key of a candidate, best first: the better value; of equal values the completed
    trial (its epochs ran their course), then the lower number."""
    return (-value if maximize else value, not complete, number)


def ranked(trials: Iterable[FrozenTrial], maximize: bool) -> list[tuple[float, FrozenTrial]]:
    """The trials that count for the study's best, each with its best_value_of, best first (by rank)."""
    scored = [(best_value_of(t, maximize), t) for t in trials]
    counted = [(v, t) for v, t in scored if v is not None and not math.isnan(v)]
    return sorted(counted, key=lambda vt: rank(vt[0], vt[1].state == TrialState.COMPLETE, vt[1].number, maximize))


def best_of(trials: Iterable[FrozenTrial], maximize: bool) -> FrozenTrial | None:
    """The best of `trials`; None when none of them counts."""
    order = ranked(trials, maximize)
    return order[0][1] if order else None


def is_maximized(study: optuna.Study) -> bool:
    return study.direction == StudyDirection.MAXIMIZE


def study_ranked(study: optuna.Study) -> list[tuple[float, FrozenTrial]]:
    """ranked() of the study's trials; empty for a multi-objective study (tuner never creates
    one; a foreign one has no single best)."""
    if len(study.directions) != 1:
        return []
    return ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                  is_maximized(study))


def study_best(study: optuna.Study) -> FrozenTrial | None:
    """The study's best trial; None while no trial counts (and for a multi-objective study)."""
    order = study_ranked(study)
    return order[0][1] if order else None


def best_epoch_of(trial: FrozenTrial) -> int | None:
    """The epoch whose metric is the trial's best (the user attr, else the first best epoch of its history)."""
    recorded = trial.user_attrs.get("best_epoch")
    if recorded is not None:
        return int(recorded)
    epochs = epoch_metrics(trial)
    return max(epochs, key=lambda e: (epochs[e], -e)) if epochs else None


def pruned_note(trial: FrozenTrial) -> str:
    """`pruned at epoch 3, best epoch 2` for a pruned trial, `` for any other: what readers add to its value."""
    if trial.state != TrialState.PRUNED:
        return ""
    ran = trial.user_attrs.get("epochs_run") or max(epoch_metrics(trial), default=None)
    return f"pruned at epoch {ran}, best epoch {best_epoch_of(trial)}"
