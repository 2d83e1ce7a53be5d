"""The epoch loop, one phase per function: reseed, train one epoch, validate, step the schedule,
early stopping, report (in the style of pytorch/examples imagenet/main.py)."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from tuner.training._loop import Diverged, Evaluation, evaluate, step_scheduler, to_device, train_one_epoch
from tuner.training._run import Run
from tuner.training._seeds import derive_seed
from tuner.training._state import TrainingState


class Supervisor(Protocol):
    """Whoever runs the trainer (a search trial, a retrain), told of every epoch; no Optuna here.

    After each epoch the loop calls report, checkpoint and epoch_done in that order, then
    asks should_stop (a pruner's decision) before its own early stopping.
    """

    def report(self, epoch: int, metric: float) -> None: ...

    def checkpoint(self, state: TrainingState, epoch: int) -> None: ...

    def epoch_done(self, epoch: int, epochs: int, metric: float) -> None: ...

    def should_stop(self) -> bool: ...


def fit(run: Run, supervisor: Supervisor) -> str:
    """Train the run's remaining epochs; why training ended: completed, pruned or early_stopped.

    Raises Diverged when the weights became NaN or infinite, and torch's out-of-memory error."""
    if run.state.history:
        # Resumed from a checkpoint. A hand-back (on_epoch) comes after the epoch's
        # checkpoint but before its prune/stop decisions: take them now, as the
        # uninterrupted run did, instead of training on past them.
        stopped = stop_reason(run, supervisor)
        if stopped is not None:
            return stopped
    for epoch in range(run.state.start_epoch, run.hp.epochs + 1):
        begin_epoch(run, epoch)
        train_loss = train_epoch(run, epoch)
        result = validate(run)
        step_scheduler(run.state.scheduler, result.metric)
        if run.state.stopper.update(result.metric, epoch):
            run.state.keep_best()
        record_epoch(run, epoch, result, train_loss)
        report(run, supervisor, epoch, result.metric)
        stopped = stop_reason(run, supervisor)
        if stopped is not None:
            return stopped
    return "completed"


def begin_epoch(run: Run, epoch: int) -> None:
    # Reseeding from (seed, epoch) makes an epoch's augmentation, shuffling and dropout
    # independent of what ran before it, so a resumed trial repeats the same epochs.
    epoch_seed = derive_seed(run.seed, epoch)
    torch.manual_seed(epoch_seed)
    run.state.generator.manual_seed(epoch_seed)
    if run.unfreezing is not None:
        run.unfreezing.before_epoch(run, epoch)
    run.set_train_mode()


def train_epoch(run: Run, epoch: int) -> float:
    """One pass over this epoch's training batches, with a progress bar; the mean training loss."""
    bar = run.inputs.progress.steps(f"epoch {epoch}/{run.hp.epochs}", len(run.data.train_targets))
    with bar as advance:
        return train_one_epoch(run.net, run.epoch_loader(epoch), run.loss_fn, run.state.optimizer,
                               run.runtime, run.state.scaler, on_batch=advance)


def validate(run: Run) -> Evaluation:
    result = evaluate(run.net, run.val_loader, run.loss_fn, run.runtime, run.data.multilabel)
    if not math.isfinite(result.loss):
        # The epoch's last optimizer step left NaN/inf weights, which train_one_epoch
        # cannot see (always so with one batch per epoch, and in a trial's last epoch);
        # their metric is meaningless and must neither be reported nor win the study.
        raise Diverged(f"validation loss became {result.loss}")
    return result


def record_epoch(run: Run, epoch: int, result: Evaluation, train_loss: float) -> None:
    row = {"epoch": epoch, "metric": result.metric, "val_loss": result.loss, "train_loss": train_loss}
    if run.unfreezing is not None:
        row.update(run.unfreezing.columns(run))
    run.state.history.append(row)


def report(run: Run, supervisor: Supervisor, epoch: int, metric: float) -> None:
    supervisor.report(epoch, metric)
    supervisor.checkpoint(run.state, epoch)
    supervisor.epoch_done(epoch, run.hp.epochs, metric)


def stop_reason(run: Run, supervisor: Supervisor) -> str | None:
    if supervisor.should_stop():
        return "pruned"
    if run.state.stopper.should_stop:
        return "early_stopped"
    return None


@torch.no_grad()
def val_logits(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's logits (float, on the CPU) and the targets over the validation batches, in eval mode:
    what a calibration fits on, from whatever weights the model holds now."""
    run.net.eval()
    outputs, truths = [], []
    for inputs, targets in run.val_loader:
        (inputs,) = to_device((inputs,), run.runtime)
        with run.runtime.autocast():
            outputs.append(run.net(inputs).float().cpu())
        truths.append(targets.cpu())
    return torch.cat(outputs), torch.cat(truths)
