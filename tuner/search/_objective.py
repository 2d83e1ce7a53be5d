"""The Optuna objective: one trial is one fine-tuning run, reporting its metric every epoch.

The training itself is tuner.training's (which knows nothing of Optuna): this module samples
the space, reports to the trial and asks its pruner, records the trial's attrs, maps running
out of memory to a pruned trial, and keys checkpoints by the trial's lineage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

import optuna
import torch

from tuner.errors import SpaceError
from tuner.progress import Progress, short_params
from tuner.search._best import BEST_VALUE_ATTR, COUNTED_PRUNED
from tuner.space import SearchSpace
from tuner.training import (
    Diverged,
    FeatureCache,
    FeatureCacheConfig,
    Hyperparams,
    ImageData,
    OutOfMemory,
    Run,
    RunInputs,
    TrainingState,
    TrialSettings,
    build_run,
    check_space,
    count_trainable,
    default_cache_dir,
    derive_seed,
    fit,
    fitting_loss,
    free_device_memory,
    make_runtime,
    place_images,
    probe,
    task_of,
    training_device,
    wants_probe,
    without_oom,
)


class Checkpointer(Protocol):
    """Saves and restores a trial's training state, keyed by the trial's lineage."""

    def load(self, trial: optuna.Trial) -> dict[str, Any] | None: ...

    def save(self, trial: optuna.Trial, lineage: int, state: dict[str, Any]) -> None: ...


def lineage(trial: optuna.Trial) -> int:
    """The number of the original trial, so that a retried trial finds its checkpoints and seed.

    Optuna's stale-trial retry (and our own hand-back) copies user attrs into the new
    trial, so the first attempt's number travels with every retry.
    """
    original = trial.user_attrs.get("lineage")
    if original is None:
        trial.set_user_attr("lineage", trial.number)
        return trial.number
    return int(original)


class Objective:
    """Callable for `study.optimize`: samples the space, trains, reports, and records attrs.

    It trusts what it is given and checks nothing again: `space` has passed check_space and
    `device` is settings.device resolved (and checked for --compile) by training_device, both
    once per run where the study was prepared or opened, before anything was written. A
    caller holding unchecked inputs builds it with make_objective.
    """

    def __init__(
        self,
        space: SearchSpace,
        data: ImageData,
        settings: TrialSettings,
        device: torch.device,
        *,
        checkpointer: Checkpointer | None = None,
        on_epoch: Callable[[optuna.Trial, int, int, float], None] | None = None,
        keep_best: Callable[[optuna.Trial, float, dict, dict], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.space = space
        self.data = data
        self.settings = settings
        self.device = device
        self.runtime = make_runtime(self.device)
        self.checkpointer = checkpointer
        self.on_epoch = on_epoch
        self.keep_best = keep_best
        self.progress = progress or Progress()
        self.images = place_images(data, self.device)
        self.cache = None
        if settings.cache_views > 0:
            directory = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
            self.cache = FeatureCache(FeatureCacheConfig(directory, settings.cache_views), self.runtime,
                                      self.progress)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            run = self.start(trial)
        except OutOfMemory as exc:
            message = str(exc)
        else:
            return run.execute(trial)
        # Outside the except block: nothing of the half-built run is referenced any more.
        free_device_memory(self.runtime)
        trial.set_user_attr("stop_reason", "oom")
        raise optuna.TrialPruned(f"oom: {message}")

    def start(self, trial: optuna.Trial) -> TrialRun:
        """Sample the trial's parameters and build its run (model, optimizer, loaders), untrained.

        Raises OutOfMemory when the device cannot hold it."""
        context = {"task": task_of(self.data)}
        params = self.space.sample(trial, context)
        fixed = self.space.fixed_values(params, context)
        if fixed:
            trial.set_user_attr("fixed_params", fixed)
        hp = Hyperparams.from_params(params, max_epochs=self.settings.max_epochs)
        # make_loss refuses a loss that contradicts the data too; checked here first so that
        # the message names the space file and how to fix it.
        expected_loss = fitting_loss(self.data.multilabel)
        if "loss" in params and params["loss"] != expected_loss:
            raise SpaceError(
                f"{self.space.source}: loss {params['loss']!r} does not fit {context['task']} data, "
                f"which trains with {expected_loss} (choose loss with `when: {{task: ...}}`)"
            )
        origin = lineage(trial)
        sampled = {k: v for k, v in params.items() if k not in fixed}
        self.progress.show("trial", f"trial {trial.number}: {short_params(sampled)}")
        inputs = self.run_inputs()
        # Building the run moves the model to the device and may extract features there.
        run = without_oom(lambda: build_run(inputs, hp, derive_seed(self.settings.seed, origin)))
        return TrialRun(self, run, origin)

    def run_inputs(self) -> RunInputs:
        """What the trainer reads of this objective, as it is now (bench/gpu_check swaps the runtime)."""
        settings = self.settings
        return RunInputs(
            data=self.data, images=self.images, runtime=self.runtime, cache=self.cache, model=settings.model,
            weights=settings.weights, image_size=settings.image_size, seed=settings.seed,
            num_workers=settings.num_workers, compile=settings.compile, progress=self.progress,
        )


def make_objective(space: SearchSpace, data: ImageData, settings: TrialSettings, **options: Any) -> Objective:
    """An Objective from inputs nobody has checked yet (retrain, the benches, tests): the space
    checked and settings.device resolved here, once, as `tuner run` does where it prepares the
    study. `options`: Objective's keyword arguments."""
    check_space(space)
    return Objective(space, data, settings, training_device(settings.device, settings.compile), **options)


class TrialRun:
    """One trial's built run, trained under its Optuna trial: attrs, resume, probe, pruning."""

    def __init__(self, objective: Objective, training: Run, origin: int) -> None:
        self.objective = objective
        self.training = training
        self.origin = origin

    def execute(self, trial: optuna.Trial) -> float:
        started = time.monotonic()
        run = self.training
        trial.set_user_attr("device", str(run.runtime.device))
        trial.set_user_attr("trainable_params", count_trainable(run.model))
        trial.set_user_attr("feature_cache", run.features is not None)
        trial.set_user_attr("compiled", self.objective.settings.compile)
        reason, detail = "interrupted", ""  # kept if anything else (a hand-back, an error) ends the run
        try:
            # Restoring copies the checkpoint's tensors to the device: out of memory there too.
            without_oom(lambda: self.restore(trial))
            if wants_probe(run.hp) and not run.state.resumed:
                # A resumed trial's head was probed (and trained on) before its checkpoint.
                # Its feature extraction runs the backbone on the device: out of memory there too.
                result = without_oom(lambda: probe(run))
                trial.set_user_attr("probe", {**result.as_attr(), "trial": trial.number})
            reason = fit(run, TrialSupervisor(trial, self.objective, self.origin))
        except Diverged:
            reason = "diverged"
        except OutOfMemory as exc:
            reason, detail = "oom", f": {exc}"
        finally:
            self.record(trial, reason, time.monotonic() - started)
        if reason == "oom":
            # After the except block, which held the failed step's traceback: now the run's
            # model, optimizer and gradients can really be freed, and the worker goes on.
            run.release_memory()
        if reason in ("completed", "early_stopped", COUNTED_PRUNED):
            # A pruned trial's best epoch can be the study's best (tuner.search._best): its weights too.
            self.keep_best_weights(trial)
        if reason in ("pruned", "diverged", "oom"):
            # Pruned, not failed: the budget counts it and the sampler learns to avoid it.
            raise optuna.TrialPruned(reason + detail)
        return run.state.stopper.best

    def restore(self, trial: optuna.Trial) -> None:
        if self.objective.checkpointer is None:
            return
        state = self.objective.checkpointer.load(trial)
        if state is None:
            return
        self.training.restore(state)
        trial.set_user_attr("resumed_from_epoch", state["epoch"])
        # Re-report the epochs done before the interruption so the retried trial's
        # learning curve is whole and the pruner sees the same history.
        for row in self.training.state.history:
            trial.report(row["metric"], int(row["epoch"]))

    def keep_best_weights(self, trial: optuna.Trial) -> None:
        state = self.training.state
        if self.objective.keep_best is None or state.best_state is None:
            return
        settings, data, built = self.objective.settings, self.training.data, self.training.built
        meta = {
            "model": settings.model, "image_size": settings.image_size,
            "classes": list(data.classes), "multilabel": data.multilabel,
            "best_epoch": state.stopper.best_epoch, "value": state.stopper.best,
            "mean": list(built.mean), "std": list(built.std),
        }
        self.objective.keep_best(trial, state.stopper.best, state.best_state, meta)

    def record(self, trial: optuna.Trial, reason: str, seconds: float) -> None:
        state = self.training.state
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("epochs_run", len(state.history))
        trial.set_user_attr("best_epoch", state.stopper.best_epoch)
        # Optuna keeps no value for a pruned trial: its best epoch's is needed to rank it.
        trial.set_user_attr(BEST_VALUE_ATTR, state.stopper.best)
        trial.set_user_attr("train_seconds", round(seconds, 3))
        trial.set_user_attr("history", state.history)
        if self.objective.settings.compile:
            # torch falls back to running uncompiled with one log line only: said here.
            trial.set_user_attr("compile_fell_back", self.training.compile_fell_back())


class TrialSupervisor:
    """The trainer's Supervisor for an Optuna trial: reports to it, checkpoints under its
    lineage, calls on_epoch, and asks its pruner."""

    def __init__(self, trial: optuna.Trial, objective: Objective, origin: int) -> None:
        self.trial = trial
        self.objective = objective
        self.origin = origin

    def report(self, epoch: int, metric: float) -> None:
        self.trial.report(metric, epoch)

    def checkpoint(self, state: TrainingState, epoch: int) -> None:
        if self.objective.checkpointer is not None:
            self.objective.checkpointer.save(self.trial, self.origin, state.state_dict(epoch))

    def epoch_done(self, epoch: int, epochs: int, metric: float) -> None:
        if self.objective.on_epoch is not None:
            self.objective.on_epoch(self.trial, epoch, epochs, metric)

    def should_stop(self) -> bool:
        return self.trial.should_prune()
