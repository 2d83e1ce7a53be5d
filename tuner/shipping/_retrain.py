"""Retraining a study's best trial into a model folder: its parameters and epochs, on train or train+val."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch

from tuner.config import StudyConfig
from tuner.errors import OptionError, TunerError
from tuner.progress import Progress
from tuner.search import best_epoch_of, best_value_of, is_maximized, make_objective, pruned_note
from tuner.service import OpenedStudy, all_params, best_trial
from tuner.space import Branch, SearchSpace
from tuner.training import (
    ImageData,
    OutOfMemory,
    Run,
    TrialSettings,
    check_same_data,
    data_config,
    derive_seed,
    load_data,
    task_of,
    trial_settings,
    val_logits,
)
from tuner.shipping._calibration import Calibration, calibrate
from tuner.shipping._model_folder import FORMAT, THRESHOLD, model_kind, write_folder


# Under --include-val, this share of val stays out of training: the temperature is fitted on it.
CALIBRATION_SHARE = 0.2


@dataclass(frozen=True)
class RetrainRequest:
    """What `tuner retrain` was asked for beyond this machine's options; None means "as the
    study and its best trial ran"."""

    out: str
    epochs: int | None = None
    include_val: bool = False
    compile: bool | None = None
    torchscript: bool = False


@dataclass(frozen=True)
class RetrainResult:
    folder: Path
    doc: dict[str, Any]


def with_fixed_epochs(space: SearchSpace, epochs: int) -> SearchSpace:
    """`space` with `epochs` fixed at `epochs`, whatever its branches were.

    Setting the count in the trial's params is not enough: a space whose `epochs` is a
    fixed value never asks the trial for it, so `retrain --epochs` was silently ignored.
    """
    fixed = (Branch(param="epochs", type="fixed", value=epochs),)
    params = {name: fixed if name == "epochs" else branches for name, branches in space.params.items()}
    params.setdefault("epochs", fixed)
    return dataclasses.replace(space, params=params)


def with_val_in_train(data: ImageData, seed: int) -> ImageData:
    """Train on train + val less a held-out slice of val (CALIBRATION_SHARE of it, at least one image),
    which becomes val: the temperature is fitted on images the model never trained on, and the
    per-epoch metric is held out too."""
    count = len(data.val_targets)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(count * CALIBRATION_SHARE))
    kept, slice_ = order[held:].sort().values, order[:held].sort().values
    return dataclasses.replace(
        data,
        train_images=torch.cat([data.train_images, data.val_images[kept]]),
        train_targets=torch.cat([data.train_targets, data.val_targets[kept]]),
        val_images=data.val_images[slice_],
        val_targets=data.val_targets[slice_],
        on_disk=False,
    )


def check_out(out: str) -> Path:
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--out {out}: exists and is not a folder")
    return folder


def retrain(opened: OpenedStudy, request: RetrainRequest, *, progress: Progress | None = None,
            say: Callable[[str], None] = lambda line: None) -> RetrainResult:
    """Train the best trial's configuration once more, fit its temperature and write the model folder."""
    folder = check_out(request.out)
    config, machine = opened.config, opened.machine
    best = best_trial(opened.study)
    # The best epoch, of a completed or a pruned best alike (the pruned one had no end to repeat).
    epochs = request.epochs or best_epoch_of(best) or all_params(best).get("epochs") or 10
    # No spill folder beside the storage: retraining may run far from it (~/.cache/tuner/decoded).
    data = load_data(data_config(config, machine, spill_dir=None))
    # Other data than the study's would give a model the search never saw: refused, as for workers.
    check_same_data(config.data_fingerprint, data, machine.data or config.data)
    if request.include_val:
        data = with_val_in_train(data, derive_seed(config.seed, "calibration"))
    note = pruned_note(best)
    say(f"retraining trial {best.number}{f' ({note})' if note else ''} of study {opened.name}: {config.model}, "
        f"{epochs} epoch{'s' if epochs != 1 else ''} on {'train+val' if request.include_val else 'train'} "
        f"({len(data.train_targets)} images)")
    trained, value = train_best(opened, request, best, data, epochs, progress, say)
    # On held-out val the best epoch's weights are the model (the search chose by them);
    # with val in training the last epoch's weights are it.
    state = trained.model.state_dict() if request.include_val else trained.state.best_state
    weights_epoch = len(trained.state.history) if request.include_val else trained.state.stopper.best_epoch
    calibration = calibrate_shipped(trained, state, request)
    say(f"temperature {calibration.temperature} fitted on {calibration.fitted_on}: expected calibration "
        f"error {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}")
    doc = describe(opened, request, best, trained, data, epochs, weights_epoch,
                   value if not request.include_val else trained.state.history[-1]["metric"])
    doc = {**doc, "temperature": calibration.temperature, "calibration": calibration.as_doc()}
    return RetrainResult(folder, write_folder(folder, state, doc, torchscript=request.torchscript))


def train_best(opened: OpenedStudy, request: RetrainRequest, best, data: ImageData, epochs: int,
               progress: Progress | None, say: Callable[[str], None]) -> tuple[Run, float]:
    """The best trial's configuration trained for `epochs` on `data`: the run and its best metric."""
    config = opened.config

    def on_epoch(trial, epoch: int, total: int, metric: float) -> None:
        line = f"epoch {epoch}/{total} {config.metric}={metric:.4f}"
        if progress is not None:
            progress.show("metric", f"last epoch: {line}")
        say(line)

    settings = retrain_settings(config, opened, best, request)
    objective = make_objective(with_fixed_epochs(opened.space, epochs), data, settings, on_epoch=on_epoch,
                               progress=progress)
    # The lineage gives the trial's own seed: on the CPU, the same data trains the same model.
    trial = optuna.trial.FixedTrial({**best.params, "epochs": epochs},
                                    number=best.user_attrs.get("lineage", best.number))
    try:
        run = objective.start(trial)
    except OutOfMemory as exc:
        raise TunerError(f"retraining trial {best.number}: the model does not fit on {objective.runtime.device} "
                         f"({exc}); try another --device") from None
    try:
        value = run.execute(trial)
    except optuna.TrialPruned as stopped:
        raise TunerError(f"retraining trial {best.number} stopped: {stopped} (try fewer --epochs, or "
                         "another trial's parameters through tuner best --format yaml)") from None
    return run.training, value


def calibrate_shipped(trained: Run, state: Mapping[str, torch.Tensor], request: RetrainRequest) -> Calibration:
    """The temperature of the weights that ship, fitted on their val logits: val itself, or under
    --include-val the slice of val held out of training."""
    trained.model.load_state_dict(state)
    logits, targets = val_logits(trained)
    where = (f"a held-out {CALIBRATION_SHARE:.0%} of val ({len(targets)} images, left out of training)"
             if request.include_val else f"val ({len(targets)} images, not trained on)")
    return calibrate(logits, targets, trained.data.multilabel, where)


def retrain_settings(config: StudyConfig, opened: OpenedStudy, best, request: RetrainRequest) -> TrialSettings:
    """The study's trial settings on this machine, compiled as the best trial ran unless told,
    and without the study's epoch cap: retraining runs the epochs it is given."""
    compiled = bool(best.user_attrs.get("compiled", False)) if request.compile is None else request.compile
    machine = dataclasses.replace(opened.machine, compile=compiled)
    return dataclasses.replace(trial_settings(config, machine), max_epochs=None)


def describe(opened: OpenedStudy, request: RetrainRequest, best, run: Run, data: ImageData, epochs: int,
             weights_epoch: int, value: float) -> dict[str, Any]:
    """model.json's content: the model, its inputs and outputs, and where it came from."""
    config = opened.config
    return {
        "format": FORMAT,
        "model": config.model,
        "kind": model_kind(config.model),
        "head": run.built.head_name,
        "classes": list(data.classes),
        "task": task_of(data),
        "threshold": THRESHOLD if data.multilabel else None,
        "image_size": config.image_size,
        "mean": list(run.built.mean),
        "std": list(run.built.std),
        "metric": config.metric,
        "value": value,
        "value_on": f"held-out {CALIBRATION_SHARE:.0%} of val" if request.include_val else "val",
        "study": opened.name,
        "trial": best.number,
        "trial_value": best_value_of(best, is_maximized(opened.study)),
        "params": {**all_params(best), "epochs": epochs},
        "epochs": epochs,
        "epochs_run": len(run.state.history),
        "weights_epoch": weights_epoch,
        "include_val": request.include_val,
        "train_images": len(data.train_targets),
        "data": opened.machine.data or config.data,
        "pretrained": config.weights,
        "compiled": run.inputs.compile,
        "feature_cache": run.features is not None,
    }
