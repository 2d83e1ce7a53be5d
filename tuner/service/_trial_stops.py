"""The trials a worker ends on purpose before or instead of training: their errors, markers and start checks."""

from __future__ import annotations

import optuna

from tuner.search import within_budget
from tuner.service._storage import duplicate_retry

HANDED_BACK_ATTR = "handed_back"
OVER_BUDGET_ATTR = "over_budget"


class OverBudget(Exception):
    """The trial started after the study's budget was already taken by other trials."""


class HandBack(Exception):
    """The worker is stopping: the trial was checkpointed and goes back to the queue."""


class TakenOver(Exception):
    """Another worker ended this worker's running trial as dead and queued its retry."""


class DuplicateRetry(Exception):
    """The trial is a second retry of one failed trial (two workers queued it): dropped."""


# What the worker's study.optimize catches: each ends one trial, not the worker.
EXPECTED_STOPS = (OverBudget, HandBack, TakenOver, DuplicateRetry)


def refuse_start(trial: optuna.Trial, study: optuna.Study, n_trials: int, stopping: bool) -> None:
    """Raise the stop that ends `trial` before any training, if one applies."""
    if stopping:
        # A queued retry or warm-start trial was just taken: give it back, not lose it.
        trial.set_user_attr(HANDED_BACK_ATTR, True)
        raise HandBack("stopping before the trial started")
    earlier = duplicate_retry(study, trial)
    if earlier is not None:
        # Ended before any training, never counted, like a trial over the budget.
        trial.set_user_attr("duplicate_of", earlier)
        raise DuplicateRetry(f"trial {trial.number} repeats the retry of trial {earlier}")
    if not within_budget(study, trial, n_trials):
        # Ended before any training, never counted: FAIL with a marker, then stop.
        trial.set_user_attr(OVER_BUDGET_ATTR, True)
        study.stop()
        raise OverBudget(f"trial {trial.number} started after the budget was taken")
