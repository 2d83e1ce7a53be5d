"""How a study's trials are counted: the one count that `tuner status` and `tuner studies` both show."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

# FAIL trials that only Optuna calls failed, counted apart and never as trials: a handed-back
# or a retried trial goes on as its WAITING (then RUNNING) copy, which is the trial that counts;
# an over-budget trial and a duplicate retry never trained.
BOOKKEEPING = ("handed_back", "over_budget", "retried", "duplicate")


def trial_counts(trials: Iterable[FrozenTrial]) -> dict[str, Any]:
    """The study's trials by state, its finished trials, and its FAIL trials by why.

    `trials` counts each trial once: a handed-back FAIL and the WAITING copy that resumes it
    are one trial, and the bookkeeping FAILs are not trials at all.
    """
    trials = list(trials)
    states = {state.name: 0 for state in TrialState}
    for trial in trials:
        states[trial.state.name] += 1
    kinds = fail_kinds(trials)
    return {
        "trials": len(trials) - sum(kinds[k] for k in BOOKKEEPING),
        "finished": states["COMPLETE"] + states["PRUNED"],
        "states": states,
        **kinds,
    }


def fail_kinds(trials: list[FrozenTrial]) -> dict[str, int]:
    """FAIL trials by why: handed back, over budget, retried after a dead worker, duplicate, or really failed."""
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    kinds = dict.fromkeys(BOOKKEEPING, 0)
    failed = 0
    for trial in trials:
        if trial.state != TrialState.FAIL:
            continue
        if trial.user_attrs.get("handed_back"):
            kinds["handed_back"] += 1
        elif trial.user_attrs.get("over_budget"):
            kinds["over_budget"] += 1
        elif "duplicate_of" in trial.user_attrs:
            kinds["duplicate"] += 1  # a second retry of one dead trial, dropped before training
        elif trial.number in retried:
            kinds["retried"] += 1
        else:
            failed += 1
    return {"failed": failed, **kinds}
