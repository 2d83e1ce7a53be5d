"""The device path as far as a CPU can check it: out-of-memory trials, and checkpoints across devices.

A GPU's out-of-memory error is raised here by a real forward hook (torch's global module
hook), the way CUDA raises it from inside a forward pass.
"""

from __future__ import annotations

import gc
import textwrap
import weakref

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from tuner.data import ImageData
from tuner.objective import Objective, TrialSettings
from tuner.space import parse_space

SETTINGS = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", cache_views=0)
SPACE = parse_space(textwrap.dedent("""\
    params:
      freeze: {type: fixed, value: full}
      lr: {type: fixed, value: 0.001}
      epochs: {type: fixed, value: 1}
      batch_size: {type: categorical, choices: [4, 16]}
    """), source="oom.yaml", name="oom")


def tiny_data() -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (36, 3, 16, 16), dtype=torch.uint8, generator=generator)
    targets = torch.arange(36) % 2
    return ImageData(images[:24], targets[:24], images[24:], targets[24:], ("a", "b"), False, 0)


class FakeGpuMemory:
    """A global forward hook that raises CUDA's out-of-memory error for batches above `limit`.

    It keeps only weak references to the Linear heads it saw, so that a test can tell whether
    the run that ran out of memory still holds its model.
    """

    def __init__(self, limit: int, *, in_eval: bool = False) -> None:
        self.limit = limit
        self.in_eval = in_eval
        self.heads: list[weakref.ref] = []

    def __call__(self, module: nn.Module, args, output):
        if not isinstance(module, nn.Linear):
            return None
        self.heads.append(weakref.ref(module))
        if len(args[0]) > self.limit and module.training != self.in_eval:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return None

    def __enter__(self) -> "FakeGpuMemory":
        self.handle = nn.modules.module.register_module_forward_hook(self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("in_eval", [False, True], ids=["training", "evaluation"])
def test_an_out_of_memory_trial_is_pruned_as_oom_and_the_worker_goes_on(in_eval):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"batch_size": 16})  # the "huge" batch
    study.enqueue_trial({"batch_size": 4})
    with FakeGpuMemory(limit=8, in_eval=in_eval):
        study.optimize(Objective(SPACE, tiny_data(), SETTINGS), n_trials=2)
    oom, fitting = study.trials
    assert oom.state == TrialState.PRUNED and oom.user_attrs["stop_reason"] == "oom"
    assert fitting.state == TrialState.COMPLETE and fitting.user_attrs["stop_reason"] == "completed"


def test_a_run_out_of_memory_drops_its_model_before_freeing_memory():
    study = optuna.create_study(direction="maximize")
    objective = Objective(SPACE, tiny_data(), SETTINGS)
    study.enqueue_trial({"batch_size": 16})
    trial = study.ask()
    with FakeGpuMemory(limit=8) as memory, pytest.raises(optuna.TrialPruned, match="oom: CUDA out of memory"):
        try:
            objective(trial)
        except optuna.TrialPruned:
            # While the exception (and its traceback with the run's frames) is still alive:
            # the model is already unreachable, so empty_cache() could return its memory.
            gc.collect()
            assert memory.heads and all(head() is None for head in memory.heads)
            raise


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    def broken(module, args, output):
        if isinstance(module, nn.Linear):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    study = optuna.create_study(direction="maximize")
    handle = nn.modules.module.register_module_forward_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            study.optimize(Objective(SPACE, tiny_data(), SETTINGS), n_trials=1)
    finally:
        handle.remove()
    assert study.trials[0].state == TrialState.FAIL


def test_out_of_memory_while_caching_features_prunes_the_trial_as_oom(tmp_path):
    space = parse_space(SPACE.text.replace("value: full", "value: head"), source="oom.yaml", name="oom")
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu",
                             cache_views=1, cache_dir=str(tmp_path))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"batch_size": 4})
    with FakeGpuMemory(limit=8, in_eval=True):  # the extraction's batches are the whole split here
        study.optimize(Objective(space, tiny_data(), settings), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stop_reason"] == "oom"
    assert not list(tmp_path.glob("*.pt"))  # nothing half-computed was cached
