"""What a worker stores or removes as its trials end: requeued hand-backs, checkpoints, best weights, the best model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import StudyControl, best_value_of, is_maximized, is_paused, study_best
from tuner.service._checkpoints import (
    BEST_WEIGHTS_ATTR,
    ArtifactCheckpointer,
    prune_weights,
    upload_weights,
)
from tuner.service._handover import TrialHandover
from tuner.service._promotion import paused_checkpoints
from tuner.service._study_artifacts import publish_best_model
from tuner.service._trial_stops import HANDED_BACK_ATTR, OVER_BUDGET_ATTR


@dataclass(frozen=True, eq=False)
class TrialEnd:
    """The bookkeeping of a trial's end, and the tidy-up once the whole study is over."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    # Where checkpoints and best weights live: the study's artifact store, and the
    # checkpointer that writes checkpoints there under a trial's lineage.
    store: Any
    checkpointer: ArtifactCheckpointer
    control: StudyControl
    handover: TrialHandover  # requeues a handed-back trial
    # Freeze-thaw: a paused trial keeps its checkpoint, which its promotion resumes from.
    keep_paused: bool = False

    def keep_best(self, trial: optuna.Trial, value: float, state_dict: dict, meta: dict) -> None:
        """Upload the weights when this trial's best epoch beats the study's best so far."""
        best, maximize = study_best(self.study), is_maximized(self.study)
        current = None if best is None else best_value_of(best, maximize)
        if current is None or (value > current if maximize else value < current):
            artifact_id = upload_weights(self.store, trial, state_dict, meta)
            trial.set_user_attr(BEST_WEIGHTS_ATTR, artifact_id)

    def ended_early(self, study: optuna.Study, frozen: FrozenTrial) -> bool:
        """Whether the worker ended the trial on purpose (handed back, over budget, a duplicate
        retry): nothing of it to keep or report. A hand-back goes straight back to the queue."""
        if frozen.user_attrs.get(HANDED_BACK_ATTR):
            self.handover.requeue(frozen)
            study.stop()
            return True
        if frozen.user_attrs.get(OVER_BUDGET_ATTR):
            return True
        if "duplicate_of" in frozen.user_attrs:
            if self.control.looks_spent():
                study.stop()  # else the next trial would start only to find itself over budget
            return True
        return False

    def settle(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """The checkpoints and weights of a trial that ran: what can no longer resume goes."""
        ended = frozen.state in (TrialState.COMPLETE, TrialState.PRUNED) or self.lineage_ended(frozen)
        if ended and not (self.keep_paused and is_paused(frozen)):
            self.checkpointer.finish(frozen)
        if BEST_WEIGHTS_ATTR not in frozen.user_attrs or best_value_of(frozen) is None:
            return  # uploaded nothing, or ended as no candidate for the best (tuner.search.best_value_of)
        # Once the trial is told: only then is "the best trial" settled for it.
        best = study_best(study)
        prune_weights(self.store, study.get_trials(deepcopy=False), best.number if best else None,
                      maximize=is_maximized(study))
        if best is not None and best.number == frozen.number:
            # The study-level "best model" artifact, which optuna-dashboard shows under Study Artifacts.
            publish_best_model(study, self.storage, frozen.number, frozen.user_attrs[BEST_WEIGHTS_ATTR])

    def lineage_ended(self, frozen: FrozenTrial) -> bool:
        """Whether a FAIL ended its lineage: the objective raised, and Optuna retries only
        dead workers' trials. Unless another worker failed it as stale and queued the retry
        that resumes from this very checkpoint (a frozen worker's trial)."""
        if frozen.state != TrialState.FAIL:
            return False
        origin = frozen.user_attrs.get("lineage", frozen.number)
        return not any(t.user_attrs.get("lineage") == origin and t.number != frozen.number
                       for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))

    def tidy(self) -> None:
        """Once the study is over (every slot finished, nothing running or queued), remove
        what nothing can resume from: checkpoints of dead lineages, superseded weights."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return
        if self.control.left() > 0:
            return  # a stale trial just failed frees a slot: its retry may be on its way
        self.checkpointer.sweep(trials)
        for paused in paused_checkpoints(trials):
            self.checkpointer.finish(paused)  # the study is over: nothing will promote them
        best = study_best(self.study)
        if best is not None:  # else no trial counts: none uploaded weights
            prune_weights(self.store, trials, best.number, maximize=is_maximized(self.study))
