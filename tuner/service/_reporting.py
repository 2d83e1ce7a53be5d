"""What a worker says: its log lines and live display about the study and its trials, and its final summary."""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.search import (
    StudyControl,
    best_of,
    best_value_of,
    is_maximized,
    pruned_note,
    span_of,
    study_progress,
)
from tuner.service._summary import WorkerSummary, summarize
from tuner.text import plural

# The live study line is redrawn after each epoch at most this often: each redraw reads every
# trial of the study from the storage (quick epochs of head-only trials come many a second).
REDRAW_S = 2.0


class Reporter:
    """The worker's log lines about the study and its trials, its live display, and its final summary."""

    def __init__(self, study: optuna.Study, control: StudyControl, log: logging.LoggerAdapter,
                 metric: str, progress: Any, study_name: str) -> None:
        self.study = study
        self.control = control
        self.log = log
        self.metric = metric
        self.progress = progress
        self.study_name = study_name
        self.shown_at = float("-inf")  # time.monotonic() of the last redraw of the study line

    def nothing_to_do(self) -> None:
        self.log.info("budget of %s already taken; nothing to do (raise it with tuner extend "
                      "--study %s --n-trials N)", plural(self.control.n_trials, "trial"), self.study_name)

    def budget_taken(self) -> None:
        self.log.info("budget of %d trials already taken; nothing to do", self.control.n_trials)

    def joined(self, url: str, device: Any) -> None:
        self.log.info(
            "joined study %s on %s (%s, budget %s)", self.study_name,
            url, device, plural(self.control.n_trials, "trial"),
        )

    def started(self, trial: optuna.Trial) -> None:
        origin = trial.user_attrs.get("lineage")
        if origin is not None and origin != trial.number:
            done = trial.user_attrs.get("epoch", 0)
            self.log.info("trial %d resumes trial %d from epoch %d", trial.number, origin, done + 1)
        else:
            self.log.info("trial %d started", trial.number)

    def finished(self, frozen: FrozenTrial) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        reason = frozen.user_attrs.get("stop_reason", frozen.state.name.lower())
        value = frozen.value if frozen.value is not None else frozen.user_attrs.get("last_metric")
        shown = "-" if value is None else f"{value:.4f}"
        trials = self.study.get_trials(deepcopy=False)  # read once for the progress and the best
        progress = study_progress([span_of(t) for t in trials], self.control.n_trials, time.time())
        self.log.info("trial %d %s (%s) value=%s; %s; best %s", frozen.number, frozen.state.name, reason, shown,
                      progress.text(), self.best_text(trials))

    def epoch(self, number: int, epoch: int, epochs: int, metric: float) -> None:
        self.log.info("trial %d epoch %d/%d %s=%.4f", number, epoch, epochs, self.metric, metric)
        self.progress.show("metric", f"last epoch: trial {number} epoch {epoch}/{epochs} "
                                     f"{self.metric}={metric:.4f}")
        if self.progress.live and time.monotonic() - self.shown_at >= REDRAW_S:
            self.show_study()  # the elapsed time and the ETA move on between trials too

    def stopping(self, current: int | None, running: int, total: int, by_signal: bool) -> None:
        """Said at the first Ctrl-C (or `tuner stop`), before the epoch ends: what happens next."""
        again = "; Ctrl-C again to quit now" if by_signal else ""
        if current is None:
            self.log.warning("stopping: no trial is running here%s", again)
            return
        epoch = f"epoch {running} of {total}" if total else "the current epoch"
        self.log.warning("finishing %s of trial %d, then handing it back%s", epoch, current, again)

    def show_study(self) -> None:
        self.shown_at = time.monotonic()
        trials = self.study.get_trials(deepcopy=False)
        progress = study_progress([span_of(t) for t in trials], self.control.n_trials, time.time())
        self.progress.show("study", f"study {self.study_name}: {progress.text()}; best {self.metric} "
                                    f"{self.best_text(trials)}")

    def best_text(self, trials: list[FrozenTrial]) -> str:
        """The study's best (tuner.search.best_of) among `trials`, every trial of the study."""
        maximize = is_maximized(self.study)
        best = best_of(trials, maximize)
        if best is None:
            return "none yet"
        note = pruned_note(best)
        return f"{best_value_of(best, maximize):.4f} (trial {best.number}{', ' + note if note else ''})"

    def summary(self, storage_url: str, trials_run: int, wall_s: float, stopped_by_signal: bool) -> WorkerSummary:
        return summarize(self.study, storage_url, self.metric, self.control.n_trials, trials_run=trials_run,
                         wall_s=wall_s, now=time.time(), stopped_by_signal=stopped_by_signal)
