"""freeze=gradual, a per-epoch hook: the head trains alone first, then one more backbone block every k epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.training._models import count_trainable, unfreeze_top

if TYPE_CHECKING:
    from tuner.training._run import Run


class GradualUnfreezing:
    """Epochs 1..k train the head, then one more block every k epochs (k = unfreeze_every).

    The count lives in the run's TrainingState, so that a checkpoint carries it.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def before_epoch(self, run: Run, epoch: int) -> None:
        """A function of the epoch alone, so a resumed trial (which restores the count from its
        checkpoint) goes on with the same schedule. The new blocks are already in the
        optimizer's backbone group, at the backbone LR.
        """
        blocks = (epoch - 1) // self.every
        if blocks != run.state.unfrozen_blocks:
            unfreeze_top(run.built, blocks)
            run.state.unfrozen_blocks = blocks

    def restored(self, run: Run) -> None:
        """After a checkpoint's restore: its unfrozen blocks train again."""
        unfreeze_top(run.built, run.state.unfrozen_blocks)

    def columns(self, run: Run) -> dict[str, int]:
        """The epoch's history row shows how far unfreezing has gone."""
        return {"unfrozen_blocks": run.state.unfrozen_blocks, "trainable_params": count_trainable(run.model)}
