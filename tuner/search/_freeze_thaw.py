"""Freeze-thaw: a trial that ASHA stops at a rung pauses there, and is promoted once it ranks among the best."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.search._best import COUNTED_PRUNED
from tuner.search._rungs import rung_value

# On the trial that continues a paused one: the paused trial's number, and the epoch it resumes after.
PROMOTED_FROM_ATTR = "promoted_from"
PROMOTED_AT_ATTR = "promoted_at"


def is_paused(trial: FrozenTrial) -> bool:
    """Stopped by the pruner at a rung with epochs still to train; not diverged, out of memory or
    handed back (those are not rankings of the trial), nor already at its last epoch."""
    if trial.state != TrialState.PRUNED or trial.user_attrs.get("stop_reason") != COUNTED_PRUNED:
        return False
    step, epochs = trial.last_step, trial.user_attrs.get("epochs")
    return step is not None and epochs is not None and step < int(epochs)


def waiting_promotion(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The paused trials that no trial continues yet."""
    promoted = {t.user_attrs.get(PROMOTED_FROM_ATTR) for t in trials} - {None}
    return [t for t in trials if is_paused(t) and t.number not in promoted]


def promotable(trials: Iterable[FrozenTrial], reduction_factor: int, maximize: bool,
               can_resume: Callable[[FrozenTrial], bool] = lambda t: True, signal: str = "last") -> list[FrozenTrial]:
    """The paused trials that now rank in the top 1/reduction_factor of their rung, the highest
    rung first and the best value first within it: ASHA's promotion (Li et al., 2020), which
    Optuna cannot do because a pruned trial never runs again (optuna#3351).

    A paused trial is judged at the step it stopped at, against one value per lineage at that
    step: a promoted trial re-reports its parent's epochs and must not count twice. `signal`
    is the pruner's (--rung-signal): the value at that step, or the best up to it.
    """
    trials = list(trials)
    direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
    paused = [t for t in waiting_promotion(trials) if can_resume(t)]
    values = {t.number: rung_value(t, t.last_step, signal, direction) for t in paused}
    chosen = [t for t in paused if ranks_at_top(values[t.number], t.last_step, trials, reduction_factor, direction,
                                            signal)]
    sign = 1 if maximize else -1
    return sorted(chosen, key=lambda t: (-t.last_step, -sign * values[t.number]))


def ranks_at_top(value: float, step: int, trials: list[FrozenTrial], reduction_factor: int,
                 direction: StudyDirection, signal: str) -> bool:
    if math.isnan(value):
        return False
    maximize = direction == StudyDirection.MAXIMIZE
    values = sorted(rung_values(trials, step, signal, direction).values(), reverse=maximize)
    top = len(values) // reduction_factor
    # No promotion before reduction_factor trials reached the rung: a paused trial then never
    # ranked in any top share, and Optuna's ASHA already let through the one best so far.
    return top >= 1 and (value >= values[top - 1] if maximize else value <= values[top - 1])


def rung_values(trials: list[FrozenTrial], step: int, signal: str, direction: StudyDirection) -> dict[int, float]:
    """Each lineage's value at `step`, of every trial that reported it, whatever its state."""
    values: dict[int, float] = {}
    for t in trials:
        if step in t.intermediate_values:
            value = rung_value(t, step, signal, direction)
            if not math.isnan(value):
                values.setdefault(int(t.user_attrs.get("lineage", t.number)), value)
    return values


class PromotedPass(optuna.pruners.BasePruner):
    """Wraps a pruner: a promoted trial is not judged again at the rung its promotion already passed.

    A resumed trial re-reports its parent's epochs and asks the pruner at the last of them
    before training on; the rung's decision there was the promotion itself.
    """

    def __init__(self, base: optuna.pruners.BasePruner) -> None:
        self.base = base

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        resumed_at = trial.user_attrs.get(PROMOTED_AT_ATTR)
        if resumed_at is not None and trial.last_step == resumed_at:
            return False
        return self.base.prune(study, trial)
