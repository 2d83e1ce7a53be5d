"""Freeze-thaw's promotions: a worker queues the continuation of a paused trial that now ranks at the top of its rung."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import (BEST_VALUE_ATTR, PROMOTED_AT_ATTR, PROMOTED_FROM_ATTR, is_maximized, promotable,
                          waiting_promotion)
from tuner.service._artifact_store import BEST_WEIGHTS_ATTR, CHECKPOINT_ATTR
from tuner.service._storage import RETRY_OF_ATTR
from tuner.service._trial_stops import HANDED_BACK_ATTR

# What belongs to the paused trial's end, not to its continuation (which records its own).
ENDED_ATTRS = ("stop_reason", BEST_VALUE_ATTR, "train_seconds", BEST_WEIGHTS_ATTR, "duplicate_of", HANDED_BACK_ATTR)


@dataclass(frozen=True, eq=False)
class Promoter:
    """Queues at most one promotion at a time, before the worker's next trial is sampled."""

    study: optuna.Study
    reduction_factor: int
    log: logging.Logger | logging.LoggerAdapter
    signal: str = "last"  # the pruner's --rung-signal: a paused trial ranks as the pruner ranked it

    def promote(self) -> FrozenTrial | None:
        """Queue the best promotable paused trial's continuation; the paused trial, or None."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            # Queued work (the warm start's recipes, a retry, a promotion) is taken first anyway;
            # a promotion queued behind it would be judged on rankings that are stale by then.
            return None
        chosen = promotable(trials, self.reduction_factor, is_maximized(self.study),
                            can_resume=lambda t: bool(t.user_attrs.get(CHECKPOINT_ATTR)), signal=self.signal)
        if not chosen:
            return None
        self.queue(chosen[0])
        return chosen[0]

    def queue(self, paused: FrozenTrial) -> None:
        attrs = {k: v for k, v in paused.user_attrs.items() if k not in ENDED_ATTRS}
        attrs.update({PROMOTED_FROM_ATTR: paused.number, PROMOTED_AT_ATTR: paused.last_step,
                      # Two workers may promote the same trial at the same moment: the later
                      # copy is dropped when popped, as a duplicate retry is (duplicate_retry).
                      RETRY_OF_ATTR: paused.number})
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=paused.params, distributions=paused.distributions,
            # Keeps ASHA's record of the rungs the paused trial passed and reached.
            user_attrs=attrs, system_attrs=paused.system_attrs,
        ))
        self.log.info("trial %d promoted after epoch %d: it now ranks in the top 1/%d there, and resumes "
                      "from its checkpoint", paused.number, paused.last_step, self.reduction_factor)


def paused_checkpoints(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Paused trials whose checkpoints nothing resumed: freed once the study is over."""
    return [t for t in waiting_promotion(trials) if t.user_attrs.get(CHECKPOINT_ATTR)]
