"""A run's training state, which saves itself to one checkpoint dict and restores itself from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from tuner.training._loop import EarlyStopping


@dataclass(eq=False)  # compared by identity, as before: its fields hold tensors and modules
class TrainingState:
    """What training changes: weights, optimizer, schedule, scaler, early stopping, history,
    the best epoch's weights, the RNG states and how far gradual unfreezing has gone.

    Its checkpoint dict's keys are those of every checkpoint written so far: one written
    before must still resume. Not frozen: training moves it on epoch by epoch.
    """

    # What trains, built by the run: their own state_dicts go into the checkpoint.
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    stopper: EarlyStopping
    generator: torch.Generator  # the training loader's shuffling RNG, saved in the checkpoint
    # How far training has gone: load_state_dict sets it again from a checkpoint.
    start_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    unfrozen_blocks: int = 0  # freeze=gradual: how far unfreezing has gone
    resumed: bool = False

    def keep_best(self) -> None:
        """The current weights are the best so far: a copy on the CPU, so that training goes on."""
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

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
        """Restore a checkpoint; training goes on with the epoch after the checkpoint's.

        The unfrozen count is only ever non-zero for freeze=gradual; the run's unfreezing
        hook makes the restored count true of the model's parameters.
        """
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
        self.unfrozen_blocks = int(state.get("unfrozen_blocks", 0))

    def release(self) -> None:
        """Drop the references to device memory: the weights, their gradients and the optimizer's state."""
        self.optimizer.zero_grad(set_to_none=True)
        for name in ("model", "optimizer", "scheduler", "scaler", "best_state"):
            setattr(self, name, None)
