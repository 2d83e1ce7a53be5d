"""Trials that move between workers: a stopping worker's hand-back, and the takeover of dead workers' trials."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.service._storage import RETRY_OF_ATTR
from tuner.service._trial_stops import HANDED_BACK_ATTR


class TrialHandover:
    """Hand-back and takeover: trials that move between workers of a study."""

    def __init__(self, study: optuna.Study, log: logging.LoggerAdapter, grace_period: int) -> None:
        self.study = study
        self.log = log
        self.grace_period = grace_period

    def taken_over(self, number: int) -> bool:
        """Whether another worker ended this worker's trial `number` as dead.

        A worker that went without a heartbeat for the grace period (frozen by the OS, a
        swap storm, a database outage longer than the grace period) finds on waking that
        another worker failed its trial and queued the retry. Its next write to the trial
        raises, and Optuna's own tell of the finished trial then raises out of optimize:
        that used to end the worker with a traceback. The retry resumes from the last
        checkpoint, so this worker only drops the trial and goes on. An error the objective
        raised itself (a bug) is never taken for this (the caller checks).
        """
        failed = self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if not any(t.number == number for t in failed):
            return False
        self.log.warning(
            "trial %d was ended by another worker: no heartbeat from this one for %d s; its retry "
            "resumes from the last checkpoint, and this worker goes on", number, self.grace_period)
        return True

    def recover_stale(self) -> None:
        """Fail (and queue the retry of) trials whose worker died, before counting the budget.

        budget_left() counts RUNNING trials as taken, and Optuna only looks for stale
        trials when a trial starts. Without this, a dead worker's trial kept its slot
        forever: a new worker found the budget "already taken" and exited, and the last
        live worker stopped without ever retrying it.
        """
        optuna.storages.fail_stale_trials(self.study)

    def requeue(self, frozen: FrozenTrial) -> None:
        """Put a handed-back trial straight back in the queue (no grace period to wait out)."""
        attrs = {k: v for k, v in frozen.user_attrs.items() if k != HANDED_BACK_ATTR}
        attrs[RETRY_OF_ATTR] = frozen.number  # see duplicate_retry()
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=attrs, system_attrs=frozen.system_attrs,  # keeps Optuna's retry history
        ))
        self.log.warning("trial %d handed back at epoch %s; another worker resumes it",
                         frozen.number, frozen.user_attrs.get("epoch"))
