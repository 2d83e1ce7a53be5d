"""A running study's budget and stop request, as the storage has them now (`tuner extend`, `tuner stop`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.search._study import CONFIG_ATTR, budget_left

# A counter in the study's user attrs: `tuner stop` raises it, and every worker that joined
# before stops. A counter, not a flag: workers started later run, with nothing to reset.
STOP_ATTR = "tuner_stop"
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# The study's attrs are read at most this often: a worker of short trials would otherwise
# pay one more query per trial (bench (d)) to learn of a `tuner stop` a moment sooner.
REFRESH_SECONDS = 1.0


class StudyControl:
    """The budget a worker keeps to, and whether `tuner stop` asked it to stop.

    Read from the study's user attrs (one small query) after each epoch and each trial, at
    most once a second, so a budget raised by `tuner extend` or a `tuner stop` reaches
    running workers within an epoch (or a second, whichever is later).
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, n_trials: int,
                 attrs: Mapping[str, Any]) -> None:
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.n_trials = n_trials
        self.generation = int(attrs.get(STOP_ATTR, 0))
        self.stop_requested = False
        self.refreshed = time.monotonic()  # the attrs above were read just now

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.refreshed < REFRESH_SECONDS:
            return
        self.refreshed = now
        attrs = self.storage.get_study_user_attrs(self.study_id)
        self.n_trials = int(attrs.get(CONFIG_ATTR, {}).get("n_trials", self.n_trials))
        self.stop_requested = int(attrs.get(STOP_ATTR, 0)) > self.generation

    def left(self) -> int:
        """Trials still to start, exactly (reads every trial; excludes over-budget markers)."""
        return budget_left(self.study, self.n_trials)

    def looks_spent(self) -> bool:
        """Checked before Optuna creates the next trial, so a worker does not create one the
        budget has no room for.

        Counted through the study, not the raw storage: the study's storage caches finished
        trials and fetches only new and unfinished ones, while the raw storage's count reads
        every trial of the study (it made each no-op trial a third slower, bench (d)). It stays
        exact: every trial another worker started or finished is fetched.
        """
        return self.n_trials - len(self.study.get_trials(deepcopy=False, states=TAKEN)) <= 0


def request_stop(study: optuna.Study) -> None:
    """Ask every worker of `study` running now to hand its trial back and exit."""
    study.set_user_attr(STOP_ATTR, int(study.user_attrs.get(STOP_ATTR, 0)) + 1)
