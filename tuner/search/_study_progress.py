"""How far a study is, across all its workers: trials finished of the budget, elapsed time and an ETA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.text import duration, plural

# The states that spend the budget (tuner.search._study.finished_count counts the same).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialSpan:
    """When one trial ran, in epoch seconds: `end` is None while it runs, `start` None while it waits."""

    start: float | None
    end: float | None
    finished: bool  # COMPLETE or PRUNED: it counts against the budget


@dataclass(frozen=True)
class StudyProgress:
    finished: int
    n_trials: int
    elapsed_s: float  # time with at least one trial running, in any worker
    eta_s: float | None  # None until a trial finished

    @property
    def left(self) -> int:
        return max(self.n_trials - self.finished, 0)

    def text(self) -> str:
        """`3/10 trials finished, 1m05s elapsed, ETA 2m10s` (no ETA before the first finished trial)."""
        line = f"{self.finished}/{plural(self.n_trials, 'trial')} finished, {duration(self.elapsed_s)} elapsed"
        if self.eta_s is not None and self.left:
            line += f", ETA {duration(self.eta_s)}"
        return line


def busy_time(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the intervals: trials that overlap in parallel workers
    count once, and a pause with no trial running (all workers stopped overnight) not at all."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += max(end - start, 0.0)
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def study_progress(spans: Sequence[TrialSpan], n_trials: int, now: float) -> StudyProgress:
    """The study's progress from its trials' spans; pure, so that tables of spans test it.

    The ETA comes from finished trials only: they finished at a rate of (finished trials) /
    (time covered by their runs), which counts the workers that ran them in parallel; the
    trials left take (left / rate). A running trial counts in the elapsed time, not in the rate.
    """
    finished = [s for s in spans if s.finished and s.start is not None and s.end is not None]
    count = sum(1 for s in spans if s.finished)
    elapsed = busy_time((s.start, now if s.end is None else s.end) for s in spans if s.start is not None)
    eta = None
    if finished:
        took = busy_time((s.start, s.end) for s in finished)
        eta = max(n_trials - count, 0) * took / len(finished)
    return StudyProgress(finished=count, n_trials=n_trials, elapsed_s=elapsed, eta_s=eta)


def span_of(trial: FrozenTrial) -> TrialSpan:
    start = trial.datetime_start.timestamp() if trial.datetime_start else None
    end = trial.datetime_complete.timestamp() if trial.datetime_complete else None
    return TrialSpan(start=start, end=end, finished=trial.state in FINISHED)


def read_progress(study: optuna.Study, n_trials: int, now: float) -> StudyProgress:
    """The progress of the study as its storage has it (every worker's trials)."""
    return study_progress([span_of(t) for t in study.get_trials(deepcopy=False)], n_trials, now)
