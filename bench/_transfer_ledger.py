"""bench/transfer.py's accounting: what each method spent, in epochs and seconds, and what it found."""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from tuner.search import best_value_of

# Spent epochs are sums of fractions: a total that should equal the budget may fall short of
# it by rounding alone.
EPSILON = 1e-9


@dataclass
class Trace:
    """What one method spent and found in one seed: its best-so-far after every epoch it trained.

    epochs[i]: the epochs spent, cumulative, once the i-th trained epoch was recorded: 1 per
    epoch plus the probes and feature-cache passes charged with it (fractions of an epoch);
    best[i]: the best counted accuracy then (nan while none counts); seconds[i]: wall seconds
    since the method started.
    """

    method: str
    seed: int
    budget: int
    best: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    trials: int = 0
    note: str = ""
    epoch_seconds: float = 0.0  # the task's full fine-tuning epoch, measured in the same run
    val_images: int = 0
    probe_epochs: float = 0.0
    probe_seconds: float = 0.0
    cache_epochs: float = 0.0
    cache_seconds: float = 0.0

    @property
    def spent(self) -> float:
        return self.epochs[-1] if self.epochs else 0.0

    @property
    def final(self) -> float:
        """The best once the method stopped (its last epoch may straddle the budget's end)."""
        return self.best[-1] if self.best else math.nan

    def best_at(self, epochs: float) -> float:
        """Best after spending at most `epochs`; a method that stopped early keeps its last best."""
        index = bisect.bisect_right(self.epochs, epochs + EPSILON) - 1
        return self.best[index] if index >= 0 else math.nan

    def reach(self, target: float) -> tuple[float, float] | None:
        """(epochs spent, seconds) when the best first reached `target`, or None."""
        for index, value in enumerate(self.best):
            if not math.isnan(value) and value >= target:
                return self.epochs[index], self.seconds[index]
        return None


class BudgetSpent(Exception):
    """The method has spent its whole budget."""


@dataclass
class Event:
    """One trained epoch as the ledger saw it."""

    lineage: int
    seconds: float
    metric: float
    spent: float  # cumulative epochs after this one and its charges


class EpochLedger:
    """Counts every epoch a method trains, whatever the trial, and stops it at the budget.

    Each epoch costs 1, plus what was trained for it outside the epochs: a probe's head
    epochs and feature extraction (charged with its trial's first epoch, from the trial's
    `probe` attr) and the feature cache's backbone passes (the growth of the objective's
    `cache.compute_seconds` since the last epoch), both as their seconds over one full
    fine-tuning epoch's, `epoch_seconds`. Trials are keyed by their lineage (tuner's trial
    attr): a top-K trial continued from its epoch-1 checkpoint runs as a new Optuna trial
    of the same lineage.
    """

    def __init__(self, budget: int, epoch_seconds: float) -> None:
        if not epoch_seconds > 0:
            raise ValueError(f"epoch_seconds must be > 0, got {epoch_seconds}")
        self.budget = budget
        self.epoch_seconds = epoch_seconds
        self.started = time.perf_counter()
        self.events: list[Event] = []
        self.cache: Any = None  # the objective's FeatureCache, once there is one (read per epoch)
        self.cache_seen = 0.0
        self.probed: set[int] = set()  # trials whose probe has been charged
        self.spent = 0.0
        self.probe_seconds = 0.0
        self.cache_seconds = 0.0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget - EPSILON

    def probe_charge(self, trial: optuna.Trial) -> float:
        """Seconds of the trial's probe not charged yet. A retried trial carries its first
        attempt's attr (copied with the user attrs): keyed by the trial that ran the probe."""
        probe = trial.user_attrs.get("probe")
        if not probe:
            return 0.0
        ran_in = int(probe.get("trial", trial.number))
        if ran_in in self.probed:
            return 0.0
        self.probed.add(ran_in)
        return float(probe.get("seconds", 0.0)) + float(probe.get("extract_seconds", 0.0))

    def cache_charge(self) -> float:
        """Seconds the feature cache computed since the last epoch was recorded."""
        now = float(getattr(self.cache, "compute_seconds", 0.0)) if self.cache is not None else 0.0
        delta, self.cache_seen = now - self.cache_seen, now
        return max(delta, 0.0)

    def record(self, trial: optuna.Trial, metric: float) -> None:
        lineage = int(trial.user_attrs.get("lineage", trial.number))
        probe, cache = self.probe_charge(trial), self.cache_charge()
        self.probe_seconds += probe
        self.cache_seconds += cache
        self.spent += 1 + (probe + cache) / self.epoch_seconds
        self.events.append(Event(lineage, time.perf_counter() - self.started, metric, self.spent))

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        self.record(trial, metric)
        if self.exhausted:
            raise BudgetSpent(f"budget of {self.budget} epochs spent")

    def trace(self, method: str, seed: int, outcomes: Mapping[int, float | None], note: str = "",
              val_images: int = 0) -> Trace:
        """Best-so-far after each epoch. `outcomes`: lineage -> value of a completed trial, or
        None for a pruned one; a lineage missing there was running when the budget ended."""
        last_epoch = {event.lineage: index for index, event in enumerate(self.events)}
        running_best: dict[int, float] = {}
        trace = Trace(method, seed, self.budget, trials=len(last_epoch), note=note,
                      epoch_seconds=self.epoch_seconds, val_images=val_images,
                      probe_epochs=self.probe_seconds / self.epoch_seconds, probe_seconds=self.probe_seconds,
                      cache_epochs=self.cache_seconds / self.epoch_seconds, cache_seconds=self.cache_seconds)
        best = math.nan
        for index, event in enumerate(self.events):
            running_best[event.lineage] = max(running_best.get(event.lineage, -math.inf), event.metric)
            if last_epoch[event.lineage] == index:
                value = outcomes[event.lineage] if event.lineage in outcomes else running_best[event.lineage]
                if value is not None:
                    best = value if math.isnan(best) else max(best, value)
            trace.best.append(best)
            trace.seconds.append(event.seconds)
            trace.epochs.append(event.spent)
        return trace


def outcomes_of(trials: Sequence[optuna.trial.FrozenTrial], *, pruned_best_counts: bool = False
                ) -> dict[int, float | None]:
    """lineage -> what the trial counts for: its value (completed) or None (pruned, by default);
    unfinished trials are left out.

    The one place that decides whether a pruned trial's best epoch counts. tuner's method
    passes pruned_best_counts=True: its `best` and `retrain` reproduce a pruned trial's best
    epoch (tuner.search's best_value_of: a trial the pruner stopped counts with its best
    epoch, a diverged or out-of-memory one never). Plain Optuna's best_trial, which the
    baselines stand for, counts completed trials only.
    """
    out: dict[int, float | None] = {}
    for trial in trials:
        lineage = int(trial.user_attrs.get("lineage", trial.number))
        if trial.state == TrialState.COMPLETE:
            out[lineage] = trial.value
        elif trial.state == TrialState.PRUNED:
            out[lineage] = best_value_of(trial) if pruned_best_counts else None
    return out
