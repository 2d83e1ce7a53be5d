"""A worker's closing summary: where the study is, how long it took, its best trials and what to run next."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import StudyProgress, pruned_note, span_of, study_progress, study_ranked
from tuner.service._counts import fail_kinds
from tuner.service._storage import mask_url

TOP = 3


@dataclass(frozen=True)
class TopTrial:
    number: int
    value: float  # a pruned trial's best epoch's
    params: dict[str, Any]  # the sampled parameters (the space's fixed values are the same in every trial)
    note: str = ""  # a pruned trial's `pruned at epoch 3, best epoch 2`


@dataclass(frozen=True)
class WorkerSummary:
    """What `tuner run` and `tuner worker` say when they end (the CLI prints it)."""

    study: str
    storage: str  # masked: the password never reaches the terminal or a log
    metric: str
    trials_run: int  # by this process
    wall_s: float  # this process's time in the study
    progress: StudyProgress  # the whole study's, every worker's trials
    states: dict[str, int]  # trials by state, only those with any
    top: tuple[TopTrial, ...]  # best first
    pruned_counted: int  # pruned trials whose best epoch competed for the top (tuner.search.best_value_of)
    next_commands: tuple[str, ...]
    stopped_by_signal: bool

    @property
    def password_masked(self) -> bool:
        """The next commands show *** where the storage's password goes."""
        return "***" in self.storage


def top_trials(order: list[tuple[float, FrozenTrial]], count: int = TOP) -> tuple[TopTrial, ...]:
    """The `count` first of the study's trials as it ranks them (tuner.search.study_ranked), best first."""
    return tuple(TopTrial(t.number, value, dict(sorted(t.params.items())), pruned_note(t))
                 for value, t in order[:count])


def trials_by_state(trials: list[FrozenTrial]) -> dict[str, int]:
    """`complete`, `pruned`, `running`, `waiting`, and FAIL split by why (as `tuner status` counts them)."""
    counts: dict[str, int] = {}
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        counts[state.name.lower()] = sum(1 for t in trials if t.state == state)
    counts.update({("fail" if kind == "failed" else kind.replace("_", " ")): n for kind, n in fail_kinds(trials).items()})
    return {name: n for name, n in counts.items() if n}


def command(*words: str) -> str:
    """One shell command line, each word quoted where the shell needs it."""
    return " ".join(shlex.quote(word) for word in words)


def worker_command(study: str, storage_url: str) -> str:
    """`tuner worker --study S --storage URL`, with the URL's password masked."""
    return command("tuner", "worker", "--study", study, "--storage", mask_url(storage_url))


def next_commands(study: str, storage_url: str, left: int, has_best: bool) -> tuple[str, ...]:
    """What to run next, with the study's name and (masked) storage filled in."""
    url = mask_url(storage_url)
    lines = []
    if left:
        lines.append(worker_command(study, storage_url))
    if has_best:
        lines.append(command("tuner", "retrain", "--study", study, "--storage", url, "--out", "model"))
    lines.append(command("tuner", "report", "--study", study, "--storage", url, "--out", "report"))
    lines.append(command("tuner", "dashboard", "--storage", url))
    return tuple(lines)


def summarize(study: optuna.Study, storage_url: str, metric: str, n_trials: int, *, trials_run: int, wall_s: float,
              now: float, stopped_by_signal: bool) -> WorkerSummary:
    """The closing summary of a worker of `study`, read from the storage as it stands now."""
    trials = study.get_trials(deepcopy=False)
    progress = study_progress([span_of(t) for t in trials], n_trials, now)
    order = study_ranked(study)
    top = top_trials(order)
    return WorkerSummary(
        study=study.study_name, storage=mask_url(storage_url), metric=metric, trials_run=trials_run, wall_s=wall_s,
        progress=progress, states=trials_by_state(trials), top=top,
        pruned_counted=sum(1 for _, t in order if t.state == TrialState.PRUNED),
        next_commands=next_commands(study.study_name, storage_url, progress.left, bool(top)),
        stopped_by_signal=stopped_by_signal,
    )
