"""The other workers' trials once the budget is taken: whether any still runs or waits, and the wait for them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner.search import StudyControl
from tuner.service._handover import TrialHandover
from tuner.service._signals import StopFlag


@dataclass(frozen=True, eq=False)
class OtherWorkers:
    """The other workers' trials as this worker sees them near the budget's end, and its wait for them."""

    study: optuna.Study
    control: StudyControl
    handover: TrialHandover  # fails and requeues dead workers' trials
    stop: StopFlag  # a stop (signal or `tuner stop`) ends the wait
    heartbeat_interval: float  # the study's: the longest pause between two looks

    def nothing_to_do(self) -> bool:
        """The budget is taken by finished trials and none runs or waits: no data to load."""
        if self.control.left() > 0:
            return False
        return not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))

    def budget_spent(self) -> bool:
        """Whether the budget is spent, once dead workers' trials are failed. A count query
        answers it; only when the budget looks spent is it worth reading the study to ask
        whether a RUNNING trial is really a dead worker's."""
        if not self.control.looks_spent():
            return False
        self.handover.recover_stale()
        return self.control.looks_spent()

    def wait(self, deadline: float | None) -> bool:
        """With the budget taken, stay while other workers' trials run: True if one of them
        died and its retry is queued for this worker to take (or `tuner extend` raised the
        budget), False once all have finished.

        Without this, the last worker could leave while a dead worker's trial is still
        within its grace period, and that trial would wait for a worker that never comes.
        """
        pause = 0.02
        while deadline is None or time.monotonic() < deadline:
            self.stop.poll(self.control)
            if self.stop.set:
                return False
            self.handover.recover_stale()
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if waiting or self.control.left() > 0:
                return True
            if not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return False
            self.stop.event.wait(pause)
            # Back off to one poll every 5 s at most: the others' last trials often end within
            # moments of this one (a fixed 5 s kept the whole study waiting that long), yet a
            # requeued trial should not wait a whole heartbeat either.
            pause = min(pause * 2, self.heartbeat_interval, 5)
        return False
