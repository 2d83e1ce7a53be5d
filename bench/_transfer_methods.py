"""bench/transfer.py's methods: tuner and the baselines it is measured against, each (context, seed) -> Trace."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch

from _transfer_ledger import BudgetSpent, EpochLedger, Trace, outcomes_of
from tuner.config import MachineOptions, StudyRequest
from tuner.search import PROMOTED_FROM_ATTR
from tuner.search._objective import make_objective
from tuner.search._warm_start import SEED_ADVICE, SEED_EPOCHS, WARM_START, complete_recipe, expressible
from tuner.service._prepare import prepare_study
from tuner.service._storage import StorageSettings
from tuner.service._worker import Worker
from tuner.service._worker_log import ExpectedStops
from tuner.space._model import SearchSpace
from tuner.training._data import ImageData
from tuner.training._settings import TrialSettings

# Filled in from the seed for every parameter the warm-start recipes leave open: tuner's own
# SEED_ADVICE (AdamW, weight decay 1e-4, ReduceLROnPlateau 0.1/3, dropout 0.4, batch 32, a flip
# only, early stopping patience 5, each strategy's epochs at the top of the seed's range: what
# `--recipes complete` enqueues), with a random head (the seed knows no probe). The per-trial
# cap --max-epochs applies, as for every method.
RANDOM_HEAD = {"head_init": "random"}
RECIPE_BASE = {**SEED_ADVICE, **RANDOM_HEAD}
RECIPE_EPOCHS = SEED_EPOCHS


@dataclass
class Context:
    """What every method of one task's run shares: the config, the data folder and its images,
    and the task's full fine-tuning epoch in seconds (the unit the ledger charges probes in)."""

    config: Any  # transfer.BenchConfig
    folder: Path
    data: ImageData
    space: SearchSpace
    work: Path
    epoch_seconds: float

    def settings(self, seed: int, cache_dir: Path) -> TrialSettings:
        c = self.config
        return TrialSettings(model=c.model, weights=c.weights, image_size=c.image_size, device="cpu",
                             seed=seed, max_epochs=c.max_epochs, cache_views=c.cache_views,
                             cache_dir=str(cache_dir))

    def scratch(self, method: str, seed: int) -> Path:
        """A fresh folder per method and seed: no method reuses another's feature cache."""
        folder = self.work / f"{method}-{seed}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def ledger(self) -> EpochLedger:
        return EpochLedger(self.config.budget_epochs, self.epoch_seconds)

    @property
    def val_images(self) -> int:
        return len(self.data.val_targets)


def plain_study(sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
                enqueue: Sequence[Mapping[str, Any]] = ()) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for params in enqueue:
        study.enqueue_trial(dict(params))
    return study


def run_study(ctx: Context, seed: int, method: str, study: optuna.Study, n_trials: int, note: str = "") -> Trace:
    """Trials of tuner's Objective in an in-memory study until the budget (or n_trials) is spent."""
    scratch = ctx.scratch(method, seed)
    ledger = ctx.ledger()
    objective = make_objective(ctx.space, ctx.data, ctx.settings(seed, scratch), on_epoch=ledger.on_epoch)
    ledger.cache = objective.cache
    try:
        with ExpectedStops((BudgetSpent,)).installed():
            study.optimize(objective, n_trials=n_trials)
    except BudgetSpent:
        pass
    return ledger.trace(method, seed, outcomes_of(study.trials), note, ctx.val_images)


def search_trials(ctx: Context) -> int:
    # Bounds a space whose trials could all end before their first epoch (none here).
    return 10 * ctx.config.budget_epochs


def run_random(ctx: Context, seed: int) -> Trace:
    study = plain_study(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner())
    return run_study(ctx, seed, "random", study, search_trials(ctx))


def run_optuna(ctx: Context, seed: int) -> Trace:
    study = plain_study(optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner())
    return run_study(ctx, seed, "optuna", study, search_trials(ctx))


def recipe_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The seed's three recipes as complete configurations of `space` (enqueue params): what
    tuner's `--recipes complete` enqueues, with a random head instead of a probed one."""
    recipes = (expressible(space, {**complete_recipe(recipe), **RANDOM_HEAD}) for recipe in WARM_START)
    return [params for params in recipes if params is not None]


def run_recipes(ctx: Context, seed: int) -> Trace:
    # Every parameter is given, so the sampler never draws; no pruning, early stopping as always.
    study = plain_study(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(),
                        recipe_params(ctx.space))
    return run_study(ctx, seed, "recipes", study, len(WARM_START), note="3 recipes, no search")


def optuna_recipes_study(space: SearchSpace, seed: int) -> optuna.Study:
    """Plain Optuna (TPE + MedianPruner) with the seed's three complete recipes queued first:
    what a user who read the seed's advice does without tuner."""
    return plain_study(optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner(), recipe_params(space))


def run_optuna_recipes(ctx: Context, seed: int) -> Trace:
    return run_study(ctx, seed, "optuna+recipes", optuna_recipes_study(ctx.space, seed), search_trials(ctx),
                     note="3 recipes enqueued, then TPE")


class AfterFirstEpoch(optuna.pruners.BasePruner):
    """Stops every trial after its first epoch: the screening round of top-K."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= 1


class FirstEpochCheckpoints:
    """Keeps each trial's state after its first epoch on disk, so the best ones continue from it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, lineage: int) -> Path:
        return self.folder / f"trial-{lineage}-epoch1.pt"

    def load(self, trial: optuna.Trial) -> dict[str, Any] | None:
        path = self.path(int(trial.user_attrs["lineage"]))  # set by the Objective before it restores
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, trial: optuna.Trial, lineage: int, state: dict[str, Any]) -> None:
        if state["epoch"] == 1:
            torch.save(state, self.path(lineage))


def run_topk(ctx: Context, seed: int) -> Trace:
    """Screen random configurations for one epoch each until half the budget is spent, then continue
    the best in rank order from their epoch-1 state."""
    scratch = ctx.scratch("topk", seed)
    budget = ctx.config.budget_epochs
    ledger = ctx.ledger()
    checkpoints = FirstEpochCheckpoints(scratch)
    objective = make_objective(ctx.space, ctx.data, ctx.settings(seed, scratch), checkpointer=checkpoints,
                               on_epoch=ledger.on_epoch)
    ledger.cache = objective.cache
    screen = plain_study(optuna.samplers.RandomSampler(seed=seed), AfterFirstEpoch())
    final = plain_study(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner())

    def half_spent(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Half the budget, probes and caches included: a screened trial costs 1 epoch or more.
        if ledger.spent >= budget / 2:
            study.stop()

    try:
        with ExpectedStops((BudgetSpent,)).installed():
            screen.optimize(objective, n_trials=max(1, budget), callbacks=[half_spent])
            ranked = sorted((t for t in screen.trials if 1 in t.intermediate_values),
                            key=lambda t: t.intermediate_values[1], reverse=True)
            for trial in ranked:
                # Same lineage: the continued trial restores the epoch-1 state and keeps its seed.
                final.enqueue_trial(trial.params, user_attrs={"lineage": trial.number})
            final.optimize(objective, n_trials=len(ranked))
    except BudgetSpent:
        pass
    # The screening round's trials count only through their continuation.
    outcomes = {lineage: None for lineage in outcomes_of(screen.trials)}
    outcomes.update(outcomes_of(final.trials))
    # Counted by what the Objective restored: a continuation that retrained from scratch is not one.
    continued = sum(1 for t in final.trials if t.user_attrs.get("resumed_from_epoch") == 1)
    return ledger.trace("topk", seed, outcomes, f"{len(screen.trials)} screened, {continued} continued from epoch 1",
                        ctx.val_images)


class BudgetedWorker(Worker):
    """tuner's Worker, stopped the way a user stops it (the stop flag) once the budget is spent."""

    def __init__(self, *args: Any, ledger: EpochLedger, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        # The Worker builds its Objective (and with it the feature cache) once it starts work.
        self.ledger.cache = self.objective.cache
        self.ledger.record(trial, metric)
        if self.ledger.exhausted:
            self.stop.event.set()  # the worker hands the trial back and stops
        super().on_epoch(trial, epoch, epochs, metric)


def run_tuner(ctx: Context, seed: int) -> Trace:
    """tuner's defaults, as `tuner run` does them: a SQLite study created from the folder, one Worker."""
    scratch = ctx.scratch("tuner", seed)
    c = ctx.config
    storage = StorageSettings(url=f"sqlite:///{scratch / 'tuner.db'}")
    request = StudyRequest(space=c.space, data=str(ctx.folder), given=dict(
        model=c.model, image_size=c.image_size, weights=c.weights, sampler=c.tuner_sampler, pruner=c.tuner_pruner,
        n_trials=10 * c.budget_epochs, seed=seed, max_epochs=c.max_epochs, cache_views=c.cache_views,
        prior_weight=c.tuner_prior_weight, startup_trials=c.tuner_startup_trials,
        min_resource=c.tuner_min_resource, reduction_factor=c.tuner_reduction_factor,
        rung_signal=c.tuner_rung_signal, rung_margin=c.tuner_rung_margin, head_trials=c.tuner_head_trials,
        recipes=c.tuner_recipes, freeze_thaw=c.tuner_freeze_thaw))
    machine = MachineOptions(device="cpu", quiet=True, cache_dir=str(scratch / "cache"),
                             artifacts=str(scratch / "artifacts"))
    ledger = ctx.ledger()
    worker = BudgetedWorker(prepare_study(storage, "bench", request, machine), ledger=ledger)
    # The budget's stop hands the running trial back "for another worker": expected here, not news.
    worker.log.logger.setLevel(logging.ERROR)
    ledger.started = time.perf_counter()
    worker.run()
    trials = worker.study.get_trials(deepcopy=False)
    promoted = sum(1 for t in trials if PROMOTED_FROM_ATTR in t.user_attrs)
    note = f"{promoted} promoted by freeze-thaw" if c.tuner_freeze_thaw else ""
    return ledger.trace("tuner", seed, outcomes_of(trials, pruned_best_counts=True), note, ctx.val_images)


METHODS: dict[str, Callable[[Context, int], Trace]] = {
    "tuner": run_tuner, "random": run_random, "optuna": run_optuna, "topk": run_topk, "recipes": run_recipes,
    "optuna+recipes": run_optuna_recipes,
}
ALL_METHODS = tuple(METHODS)
