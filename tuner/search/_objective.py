"""The Optuna objective: one trial is one fine-tuning run, reporting its metric every epoch."""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import optuna
import torch

from tuner.training._batches import ImageBatches, TensorBatches, eval_transform, place_images, train_transform
from tuner.training._data import AugmentConfig, ImageData
from tuner.errors import DeviceError, SpaceError
from tuner.training._features import CachedFeatures, FeatureCache, FeatureCacheConfig, default_cache_dir, extract
from tuner.training._models import BuiltModel, ModelSpec, build_model, count_trainable, freeze, set_train_mode, unfreeze_top
from tuner.training._probe import probe_head
from tuner.progress import Progress, short_params
from tuner.space._space import SearchSpace
from tuner.training._hyperparams import Hyperparams, param_problem
from tuner.training._settings import TrialSettings
from tuner.training._loop import (
    Diverged,
    EarlyStopping,
    OutOfMemory,
    Runtime,
    evaluate,
    fitting_loss,
    free_device_memory,
    make_loss,
    make_optimizer,
    make_runtime,
    make_scheduler,
    resolve_device,
    step_scheduler,
    train_one_epoch,
    without_oom,
)

class Checkpointer(Protocol):
    """Saves and restores a trial's training state, keyed by the trial's lineage."""

    def load(self, trial: optuna.Trial) -> dict[str, Any] | None: ...

    def save(self, trial: optuna.Trial, lineage: int, state: dict[str, Any]) -> None: ...


def metric_name(multilabel: bool) -> str:
    return "val_macro_f1" if multilabel else "val_accuracy"


def task_of(data: ImageData) -> str:
    return "multi_label" if data.multilabel else "single_label"


def check_space(space: SearchSpace) -> None:
    """Every parameter of the space must be one the trainer understands, with usable values."""
    known = Hyperparams.names()
    for name, branches in space.params.items():
        if name not in known:
            raise SpaceError(
                f"{space.source}: parameter {name!r} is not one the trainer understands "
                f"(known: {', '.join(known)})"
            )
        for branch in branches:
            # Fixed values and choices are untyped in the space file (YAML reads `1e-3` as
            # text); check them now rather than in the middle of the first trial that
            # samples them. A float/int range is checked by its high end: its type, and
            # that at least some of it is allowed (lr high 0 is not).
            values = branch.possible_values() if branch.type in ("fixed", "categorical") else (branch.high,)
            for value in values:
                problem = param_problem(name, value)
                if problem is not None:
                    raise SpaceError(f"{space.source}: {problem}")


def check_compiler(device: torch.device) -> None:
    """torch.compile on CPU generates C++; without a compiler every trial would fail at its first step."""
    if device.type == "cpu" and not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        raise DeviceError("--compile on CPU needs a C compiler (cc, gcc or clang) on PATH: "
                          "install one (e.g. apt-get install gcc) or leave out --compile")


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


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from the study seed, trial lineage and epoch."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def reset_parameters(module: torch.nn.Module) -> None:
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


class Objective:
    """Callable for `study.optimize`: samples the space, trains, reports, and records attrs."""

    def __init__(
        self,
        space: SearchSpace,
        data: ImageData,
        settings: TrialSettings,
        *,
        checkpointer: Checkpointer | None = None,
        on_epoch: Callable[[optuna.Trial, int, int, float], None] | None = None,
        keep_best: Callable[[optuna.Trial, float, dict, dict], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        check_space(space)
        self.space = space
        self.data = data
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.compile:
            check_compiler(self.device)
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

    def start(self, trial: optuna.Trial) -> "TrialRun":
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
        # Building the run moves the model to the device and may extract features there.
        return without_oom(lambda: TrialRun(self, hp, derive_seed(self.settings.seed, origin), origin))


class TrialRun:
    """The state of one trial's training: model, optimizer, schedule, loaders, early stopping."""

    def __init__(self, objective: Objective, hp: Hyperparams, seed: int, origin: int) -> None:
        self.objective = objective
        self.hp = hp
        self.seed = seed
        self.origin = origin
        self.runtime: Runtime = objective.runtime
        self.data = objective.data
        # Every trial of a study starts from the same backbone (it matters for --weights none),
        # so cached features are shared; only the new head's initialisation is the trial's own.
        torch.manual_seed(objective.settings.seed)
        self.built = self.build_model()
        torch.manual_seed(seed)
        reset_parameters(self.built.head)
        backbone, head = freeze(self.built, hp.freeze, hp.unfreeze_blocks)
        self.model = self.built.model.to(self.runtime.device)
        if self.runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.aug = AugmentConfig.from_params(hp.__dict__)
        self.features = self.cached_features()
        # With cached features only the head runs; otherwise the whole model does.
        self.net = self.built.head if self.features is not None else self.model
        if objective.settings.compile:
            # Only the network that runs is wrapped: self.model stays the plain module, so
            # state_dict() and checkpoints keep their keys (no `_orig_mod.` prefix).
            self.net = torch.compile(self.net)
        self.optimizer = make_optimizer(hp, backbone, head)
        self.scheduler = make_scheduler(hp, self.optimizer)
        self.scaler = self.runtime.grad_scaler()
        self.loss_fn = make_loss(hp, self.data.train_targets, self.data.num_classes, self.data.multilabel,
                                 self.runtime.device)
        self.stopper = EarlyStopping(hp.patience)
        self.generator = torch.Generator()
        self.train_loader = self.loader(train=True)
        self.val_loader = self.loader(train=False)
        self.start_epoch = 1
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.unfrozen_blocks = 0  # freeze=gradual: how far unfreezing has gone
        self.resumed = False

    def build_model(self) -> BuiltModel:
        settings = self.objective.settings
        return build_model(ModelSpec(
            name=settings.model, weights=settings.weights,
            num_classes=self.data.num_classes, dropout=self.hp.dropout,
        ))

    def cached_features(self) -> CachedFeatures | None:
        if self.hp.freeze != "head" or self.objective.cache is None:
            return None
        settings = self.objective.settings
        return self.objective.cache.get(self.built, settings.model, self.data, settings.image_size, self.aug)

    def feature_loader(self, features: torch.Tensor, targets: torch.Tensor, *, train: bool) -> TensorBatches:
        return TensorBatches(
            (features, targets), self.hp.batch_size, shuffle=train,
            generator=self.generator if train else None,
            drop_last=train and len(features) > self.hp.batch_size,
        )

    def epoch_loader(self, epoch: int) -> ImageBatches | TensorBatches:
        """This epoch's training batches: images, or one cached view of their features."""
        if self.features is None:
            return self.train_loader
        view = derive_seed(self.seed, epoch, "view") % len(self.features.train_views)
        return self.feature_loader(self.features.view(view), self.data.train_targets, train=True)

    def set_train_mode(self) -> None:
        if self.hp.freeze == "head":
            # A frozen backbone is a fixed feature extractor: eval mode throughout (BatchNorm
            # statistics and any dropout inside it), exactly as the cached features were made.
            self.model.eval()
            self.built.head.train()
        else:
            set_train_mode(self.model)

    def loader(self, *, train: bool) -> ImageBatches | TensorBatches:
        if self.features is not None:
            if train:
                return self.epoch_loader(1)
            return self.feature_loader(self.features.val, self.data.val_targets, train=False)
        mean, std = self.built.mean, self.built.std
        # Images and targets come from one placed split: always on the same device.
        split = self.objective.images.train if train else self.objective.images.val
        transform = train_transform(self.aug, mean, std) if train else eval_transform(mean, std)
        return ImageBatches(
            split.images, split.targets, transform, self.runtime.device, self.hp.batch_size,
            shuffle=train, generator=self.generator if train else None,
            # A last batch of one sample breaks BatchNorm in train mode.
            drop_last=train and len(split.images) > self.hp.batch_size,
            num_workers=self.num_workers(),
        )

    def num_workers(self) -> int:
        configured = self.objective.settings.num_workers
        if configured is not None:
            return configured
        # Loader processes only pay off when batches come from host memory to a GPU;
        # images kept on the GPU, or a CPU run, slice batches faster in this process.
        return 4 if self.runtime.is_cuda and self.objective.images.device.type == "cpu" else 0

    def seed_epoch(self, epoch: int) -> None:
        # Reseeding from (seed, epoch) makes an epoch's augmentation, shuffling and dropout
        # independent of what ran before it, so a resumed trial repeats the same epochs.
        epoch_seed = derive_seed(self.seed, epoch)
        torch.manual_seed(epoch_seed)
        self.generator.manual_seed(epoch_seed)

    def execute(self, trial: optuna.Trial) -> float:
        started = time.monotonic()
        trial.set_user_attr("device", str(self.runtime.device))
        trial.set_user_attr("trainable_params", count_trainable(self.model))
        trial.set_user_attr("feature_cache", self.features is not None)
        trial.set_user_attr("compiled", self.objective.settings.compile)
        reason, detail = "interrupted", ""  # kept if anything else (a hand-back, an error) ends the run
        try:
            # Restoring copies the checkpoint's tensors to the device: out of memory there too.
            without_oom(lambda: self.restore(trial))
            if self.wants_probe() and not self.resumed:
                # A resumed trial's head was probed (and trained on) before its checkpoint.
                self.probe(trial)
            reason = self.run_epochs(trial)
        except Diverged:
            reason = "diverged"
        except OutOfMemory as exc:
            reason, detail = "oom", f": {exc}"
        finally:
            self.record(trial, reason, time.monotonic() - started)
        if reason == "oom":
            # After the except block, which held the failed step's traceback: now the run's
            # model, optimizer and gradients can really be freed, and the worker goes on.
            self.release_memory()
        if reason in ("pruned", "diverged", "oom"):
            # Pruned, not failed: the budget counts it and the sampler learns to avoid it.
            raise optuna.TrialPruned(reason + detail)
        self.keep_best_weights(trial)
        return self.stopper.best

    def keep_best_weights(self, trial: optuna.Trial) -> None:
        if self.objective.keep_best is None or self.best_state is None:
            return
        meta = {
            "model": self.objective.settings.model, "image_size": self.objective.settings.image_size,
            "classes": list(self.data.classes), "multilabel": self.data.multilabel,
            "best_epoch": self.stopper.best_epoch, "value": self.stopper.best,
            "mean": list(self.built.mean), "std": list(self.built.std),
        }
        self.objective.keep_best(trial, self.stopper.best, self.best_state, meta)

    def run_epochs(self, trial: optuna.Trial) -> str:
        if self.history:
            # Resumed from a checkpoint. A hand-back (on_epoch) comes after the epoch's
            # checkpoint but before its prune/stop decisions: take them now, as the
            # uninterrupted run did, instead of training on past them.
            if trial.should_prune():
                return "pruned"
            if self.stopper.should_stop:
                return "early_stopped"
        for epoch in range(self.start_epoch, self.hp.epochs + 1):
            self.seed_epoch(epoch)
            self.unfreeze_for(epoch)
            self.set_train_mode()
            bar = self.objective.progress.steps(f"epoch {epoch}/{self.hp.epochs}", len(self.data.train_targets))
            with bar as advance:
                train_loss = train_one_epoch(self.net, self.epoch_loader(epoch), self.loss_fn, self.optimizer,
                                             self.runtime, self.scaler, on_batch=advance)
            result = evaluate(self.net, self.val_loader, self.loss_fn, self.runtime, self.data.multilabel)
            if not math.isfinite(result.loss):
                # The epoch's last optimizer step left NaN/inf weights, which train_one_epoch
                # cannot see (always so with one batch per epoch, and in a trial's last epoch);
                # their metric is meaningless and must neither be reported nor win the study.
                raise Diverged(f"validation loss became {result.loss}")
            step_scheduler(self.scheduler, result.metric)
            if self.stopper.update(result.metric, epoch):
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            row = {"epoch": epoch, "metric": result.metric, "val_loss": result.loss, "train_loss": train_loss}
            if self.hp.freeze == "gradual":
                row.update(unfrozen_blocks=self.unfrozen_blocks, trainable_params=count_trainable(self.model))
            self.history.append(row)
            trial.report(result.metric, epoch)
            self.checkpoint(trial, epoch)
            if self.objective.on_epoch is not None:
                self.objective.on_epoch(trial, epoch, self.hp.epochs, result.metric)
            if trial.should_prune():
                return "pruned"
            if self.stopper.should_stop:
                return "early_stopped"
        return "completed"

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
            "best_model": self.best_state,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "unfrozen_blocks": self.unfrozen_blocks,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.history = list(state["history"])
        self.best_state = state.get("best_model")
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        self.start_epoch = state["epoch"] + 1
        self.resumed = True
        if self.hp.freeze == "gradual":
            self.unfrozen_blocks = int(state.get("unfrozen_blocks", 0))
            unfreeze_top(self.built, self.unfrozen_blocks)

    def checkpoint(self, trial: optuna.Trial, epoch: int) -> None:
        if self.objective.checkpointer is not None:
            self.objective.checkpointer.save(trial, self.origin, self.state_dict(epoch))

    def restore(self, trial: optuna.Trial) -> None:
        if self.objective.checkpointer is None:
            return
        state = self.objective.checkpointer.load(trial)
        if state is None:
            return
        self.load_state_dict(state)
        trial.set_user_attr("resumed_from_epoch", state["epoch"])
        # Re-report the epochs done before the interruption so the retried trial's
        # learning curve is whole and the pruner sees the same history.
        for row in self.history:
            trial.report(row["metric"], int(row["epoch"]))

    # --- gradual unfreezing and probe-then-fine-tune ---------------------------------------

    def unfreeze_for(self, epoch: int) -> None:
        """freeze=gradual: epochs 1..k train the head, then one more block every k epochs.

        A function of the epoch alone, so a resumed trial (which restores the count from its
        checkpoint) goes on with the same schedule. The new blocks are already in the
        optimizer's backbone group, at the backbone LR.
        """
        if self.hp.freeze != "gradual":
            return
        blocks = (epoch - 1) // self.hp.unfreeze_every
        if blocks != self.unfrozen_blocks:
            unfreeze_top(self.built, blocks)
            self.unfrozen_blocks = blocks

    def wants_probe(self) -> bool:
        return self.hp.head_init == "probe" and self.hp.freeze != "head"

    def probe(self, trial: optuna.Trial) -> None:
        """LP-FT: train the head on the frozen backbone's features before fine-tuning starts.

        The features are those head-only trials use without augmentation (one view), so
        with the cache on they are computed once per study and machine.
        """
        train, val = self.probe_features()
        result = probe_head(
            self.built.head, (train, self.data.train_targets), (val, self.data.val_targets), self.loss_fn,
            self.runtime, batch_size=self.hp.batch_size, seed=derive_seed(self.seed, "probe"),
            multilabel=self.data.multilabel,
        )
        trial.set_user_attr("probe", {**result.as_attr(), "trial": trial.number})

    def probe_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        settings = self.objective.settings
        plain = AugmentConfig()
        if self.objective.cache is not None:
            features = self.objective.cache.get(self.built, settings.model, self.data, settings.image_size, plain)
            return features.view(0), features.val
        mean, std = self.built.mean, self.built.std
        train = extract(self.built, self.data.train_images, eval_transform(mean, std), self.runtime)
        val = extract(self.built, self.data.val_images, eval_transform(mean, std), self.runtime)
        return train, val

    def release_memory(self) -> None:
        """Drop every reference this run holds to device memory, then free it.

        empty_cache() can only return blocks no tensor uses: the model, its gradients, the
        optimizer's state and the loaders (persistent loader processes too) go first.
        """
        self.optimizer.zero_grad(set_to_none=True)
        for name in ("net", "model", "built", "optimizer", "scheduler", "scaler", "loss_fn", "features",
                     "train_loader", "val_loader", "best_state"):
            setattr(self, name, None)
        free_device_memory(self.runtime)

    def record(self, trial: optuna.Trial, reason: str, seconds: float) -> None:
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("epochs_run", len(self.history))
        trial.set_user_attr("best_epoch", self.stopper.best_epoch)
        trial.set_user_attr("train_seconds", round(seconds, 3))
        trial.set_user_attr("history", self.history)
