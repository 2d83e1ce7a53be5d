"""What a worker says: its log lines and live display about the study and its trials, and its final summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.search import StudyControl, finished_count
from tuner.text import plural


@dataclass(frozen=True)
class WorkerSummary:
    trials_run: int
    finished: int
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    stopped_by_signal: bool


@dataclass(frozen=True, eq=False)
class Reporter:
    """The worker's log lines about the study and its trials, its live display, and its final summary."""

    study: optuna.Study
    control: StudyControl  # the budget the lines count against
    log: logging.LoggerAdapter
    metric: str  # the study's metric, named in every line about a value
    progress: Any  # tuner.progress: the live display, or plain lines
    study_name: str

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
        self.log.info("trial %d %s (%s) value=%s; %d/%d finished; best %s", frozen.number,
                      frozen.state.name, reason, shown, finished_count(self.study), self.control.n_trials,
                      self.best_text())

    def epoch(self, number: int, epoch: int, epochs: int, metric: float) -> None:
        self.log.info("trial %d epoch %d/%d %s=%.4f", number, epoch, epochs, self.metric, metric)
        self.progress.show("metric", f"last epoch: trial {number} epoch {epoch}/{epochs} "
                                     f"{self.metric}={metric:.4f}")

    def stopping(self, current: int | None, running: int, total: int, by_signal: bool) -> None:
        """Said at the first Ctrl-C (or `tuner stop`), before the epoch ends: what happens next."""
        again = "; Ctrl-C again to quit now" if by_signal else ""
        if current is None:
            self.log.warning("stopping: no trial is running here%s", again)
            return
        epoch = f"epoch {running} of {total}" if total else "the current epoch"
        self.log.warning("finishing %s of trial %d, then handing it back%s", epoch, current, again)

    def show_study(self) -> None:
        done = f"{finished_count(self.study)}/{plural(self.control.n_trials, 'trial')}"
        self.progress.show("study", f"study {self.study_name}: {done} finished; best {self.metric} "
                                    f"{self.best_text()}")

    def best_text(self) -> str:
        try:
            best = self.study.best_trial
        except ValueError:
            return "none yet"
        return f"{best.value:.4f} (trial {best.number})"

    def summary(self, trials_run: int, stopped_by_signal: bool) -> WorkerSummary:
        try:
            best = self.study.best_trial
            value, params, number = best.value, dict(best.params), best.number
            params.update(best.user_attrs.get("fixed_params", {}))
        except ValueError:
            value, params, number = None, {}, None
        return WorkerSummary(
            trials_run=trials_run, finished=finished_count(self.study), n_trials=self.control.n_trials,
            best_value=value, best_params=params, best_number=number, stopped_by_signal=stopped_by_signal,
        )
