"""Per-epoch checkpoints and best weights in an Optuna artifact store, safe to resume from."""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from tuner.search import best_of, best_value_of
from tuner.service._artifact_store import BEST_WEIGHTS_ATTR, CHECKPOINT_ATTR, checkpoint_prefix

RESUME_PROBLEM_ATTR = "resume_problem"
LOG = logging.getLogger(__name__)


class ArtifactCheckpointer:
    """Saves a trial's state every epoch; a retry (which inherits user attrs) resumes from it.

    Each epoch writes a new object and only then moves the trial's pointer to it, so a
    worker killed mid-write leaves the previous checkpoint intact and referenced.
    """

    def __init__(self, store, study_name: str) -> None:
        self.store = store
        self.prefix = checkpoint_prefix(study_name)

    def key(self, lineage: int, epoch: int) -> str:
        return f"{self.prefix}-t{lineage}-e{epoch:04d}.pt"

    def save(self, trial: optuna.Trial, lineage: int, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        key = self.key(lineage, state["epoch"])
        self.store.write(key, buffer)
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)
        trial.set_user_attr(CHECKPOINT_ATTR, key)
        if previous and previous != key:
            self.discard(previous)

    def load(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """The state of the trial's last checkpoint, with every tensor on the CPU; None to start afresh.

        The key travels in the trial's user attrs (a retry inherits them), so it is already
        the lineage's. A key whose checkpoint cannot be read is not a fresh start: the retry
        trains from scratch, and says so in the log and in its `resume_problem` attr.
        """
        key = trial.user_attrs.get(CHECKPOINT_ATTR)
        if not key:
            return None
        try:
            with self.store.open_reader(key) as reader:
                data = io.BytesIO(reader.read())
        except ArtifactNotFound:
            return self.restart(trial, f"checkpoint {key} is missing from the artifact store")
        try:
            # map_location: a checkpoint written on a GPU resumes on a CPU-only worker (and
            # the RNG state must be a CPU tensor anyway); load_state_dict then copies each
            # tensor to wherever this worker's model and optimizer live.
            # weights_only: a checkpoint is data, never code, even from a shared folder.
            return torch.load(data, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
            return self.restart(trial, f"checkpoint {key} is unreadable ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''})")

    @staticmethod
    def restart(trial: optuna.Trial, reason: str) -> None:
        message = f"trial {trial.number} restarts from epoch 1: {reason}"
        LOG.warning(message)
        trial.set_user_attr(RESUME_PROBLEM_ATTR, message)
        return None

    def discard(self, key: str) -> None:
        try:
            self.store.remove(key)
        except ArtifactNotFound:
            pass

    def finish(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
        """A finished lineage needs no resume point: free the space.

        Besides the checkpoint the trial points to, a worker killed while writing the next
        one may have left that object unreferenced (it writes before it moves the pointer).
        """
        key = trial.user_attrs.get(CHECKPOINT_ATTR)
        if key:
            self.discard(key)
        origin, epoch = trial.user_attrs.get("lineage"), trial.user_attrs.get("epoch")
        if origin is not None and epoch is not None:
            self.discard(self.key(int(origin), int(epoch) + 1))

    def sweep(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Once the study is over, free the checkpoints of the lineages that ended in FAIL
        (a dead worker's trial past --max-retry): none of them can resume any more. Every other
        finished trial freed its own when it finished (two store calls each, on every exiting
        worker, would be wasted on them)."""
        for trial in trials:
            if trial.state == optuna.trial.TrialState.FAIL:
                self.finish(trial)


def prune_weights(store, trials: list[optuna.trial.FrozenTrial], best_number: int | None, *,
                  maximize: bool = True) -> None:
    """Remove the best weights of every finished trial but the study's best.

    A worker uploads weights when its trial beats the best trial it can see, so racing
    workers (and a worker killed after the upload) leave weights that are no longer the
    best: each new best and the end of the study remove them. A RUNNING trial's weights
    are left alone: it may be about to become the best. (The artifact's entry stays in the
    finished trial's system attrs, which Optuna does not let anyone change.)
    """
    keep = weights_keeper(trials, best_number, maximize=maximize)
    for trial in trials:
        artifact_id = trial.user_attrs.get(BEST_WEIGHTS_ATTR)
        if artifact_id and trial.state.is_finished() and trial.number != keep:
            try:
                store.remove(artifact_id)
            except ArtifactNotFound:
                pass


def weights_keeper(trials: list[optuna.trial.FrozenTrial], best_number: int | None, *,
                   maximize: bool = True) -> int | None:
    """The trial whose weights stay: the best trial, if it holds weights; else the best of the
    trials that do, as the study ranks them (tuner.search.best_of).

    A trial uploads only when it strictly beats the best finished trial: of two trials that
    tie, only the first to finish uploads, while the study's best may be the other (a
    completed trial wins a tie with a pruned one, and a lower number with a higher one).
    Keeping only the best trial's weights then removed the study's one copy of its best weights.
    """
    holders = [t for t in trials if t.user_attrs.get(BEST_WEIGHTS_ATTR)]
    if any(t.number == best_number and best_value_of(t, maximize) is not None for t in holders):
        return best_number
    kept = best_of(holders, maximize)
    return None if kept is None else kept.number


def upload_weights(store, trial: optuna.Trial, state_dict: dict[str, Any], meta: dict[str, Any]) -> str:
    """Keep a trial's best-epoch weights as an artifact that optuna-dashboard lists."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"trial-{trial.number}-weights.pt")
        torch.save({"model": state_dict, "meta": meta}, path)
        return upload_artifact(artifact_store=store, file_path=path, study_or_trial=trial)
