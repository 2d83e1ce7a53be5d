"""The device path as far as a CPU can check it: out-of-memory trials, and checkpoints across devices.

A GPU's out-of-memory error is raised here by a real forward hook (torch's global module
hook), the way CUDA raises it from inside a forward pass.
"""

from __future__ import annotations

import contextlib
import gc
import textwrap
import weakref

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from tuner.training._data import ImageData
from tuner.search._objective import make_objective
from tuner.training._settings import TrialSettings
from tuner.space._space import parse_space

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
        study.optimize(make_objective(SPACE, tiny_data(), SETTINGS), n_trials=2)
    oom, fitting = study.trials
    assert oom.state == TrialState.PRUNED and oom.user_attrs["stop_reason"] == "oom"
    assert fitting.state == TrialState.COMPLETE and fitting.user_attrs["stop_reason"] == "completed"


def test_a_run_out_of_memory_drops_its_model_before_freeing_memory():
    study = optuna.create_study(direction="maximize")
    objective = make_objective(SPACE, tiny_data(), SETTINGS)
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
            study.optimize(make_objective(SPACE, tiny_data(), SETTINGS), n_trials=1)
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
        study.optimize(make_objective(space, tiny_data(), settings), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stop_reason"] == "oom"
    assert not list(tmp_path.glob("*.pt"))  # nothing half-computed was cached


# --- checkpoints across devices, and retries whose checkpoint is gone ---------------------

def _tag_as_cuda(storage):
    # torch.save records CPU storages as CUDA ones, exactly as a checkpoint written on a GPU
    # is tagged; other storages go on to torch's own taggers.
    return "cuda:0" if storage.device.type == "cpu" else None


@pytest.fixture
def saved_as_cuda(monkeypatch):
    """A context in which torch.save tags CPU tensors as CUDA ones. Only inside it, and never
    for the rest of the session: torch's package registry is swapped for a copy, then restored."""

    @contextlib.contextmanager
    def tagging():
        with monkeypatch.context() as patch:
            registry = [(0, _tag_as_cuda, lambda storage, location: None),
                        *torch.serialization._package_registry]
            patch.setattr(torch.serialization, "_package_registry", registry)
            yield

    return tagging


class Interrupted(Exception):
    """A worker killed right after an epoch's checkpoint."""


def interrupt_after_epoch_1(trial, epoch, epochs, metric):
    if epoch == 1:
        raise Interrupted


TWO_EPOCHS = parse_space(SPACE.text.replace("value: 1}", "value: 2}").replace("[4, 16]", "[8]"),
                         source="two.yaml", name="two")


def interrupted_trial(tmp_path, saving=contextlib.nullcontext):
    """A study whose first trial was interrupted after its epoch-1 checkpoint, queued again."""
    from optuna.artifacts import FileSystemArtifactStore

    from tuner.service._checkpoints import ArtifactCheckpointer

    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(tmp_path)), "s")
    study = optuna.create_study(direction="maximize")
    with saving():
        study.optimize(make_objective(TWO_EPOCHS, tiny_data(), SETTINGS, checkpointer=checkpointer,
                                      on_epoch=interrupt_after_epoch_1), n_trials=1, catch=(Interrupted,))
    (first,) = study.trials
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=first.params,
                                              distributions=first.distributions, user_attrs=first.user_attrs))
    return study, checkpointer, first


def test_a_checkpoint_written_on_cuda_resumes_on_a_cpu_worker(tmp_path, saved_as_cuda):
    study, checkpointer, first = interrupted_trial(tmp_path, saved_as_cuda)
    written = (tmp_path / first.user_attrs["checkpoint"]).read_bytes()
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names a CUDA device
        torch.load(__import__("io").BytesIO(written), weights_only=True)
    study.optimize(make_objective(TWO_EPOCHS, tiny_data(), SETTINGS, checkpointer=checkpointer), n_trials=1)
    resumed = study.trials[1]
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from_epoch"] == 1 and "resume_problem" not in resumed.user_attrs


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_retry_whose_checkpoint_is_unreadable_says_it_restarts_from_scratch(tmp_path, caplog, damage):
    study, checkpointer, first = interrupted_trial(tmp_path)
    path = tmp_path / first.user_attrs["checkpoint"]
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="tuner.service._checkpoints"):
        study.optimize(make_objective(TWO_EPOCHS, tiny_data(), SETTINGS, checkpointer=checkpointer), n_trials=1)
    retry = study.trials[1]
    expected = f"trial 1 restarts from epoch 1: checkpoint {path.name} is "
    assert retry.user_attrs["resume_problem"].startswith(expected + ("missing" if damage == "missing" else "unreadable"))
    assert retry.user_attrs["resume_problem"] in caplog.messages
    assert "resumed_from_epoch" not in retry.user_attrs
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == [1, 2]


# --- where artifacts go in S3 ----------------------------------------------------------------

@pytest.mark.parametrize(("location", "expected"), [
    ("s3://bucket", ("bucket", "")),
    ("s3://bucket/", ("bucket", "")),
    ("s3://bucket/runs", ("bucket", "runs")),
    ("s3://bucket/team/runs/", ("bucket", "team/runs")),
])
def test_an_s3_location_keeps_its_prefix(location, expected):
    from tuner.service._artifact_store import parse_s3

    assert parse_s3(location) == expected


def test_an_s3_location_without_a_bucket_is_a_storage_error():
    from tuner.service._artifact_store import parse_s3
    from tuner.errors import StorageError

    with pytest.raises(StorageError, match=r"--artifacts 's3:///runs' names no bucket"):
        parse_s3("s3:///runs")


class MemoryStore:
    """Optuna's ArtifactStore protocol over a dict: what a bucket holds, key by key."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def open_reader(self, artifact_id):
        import io

        from optuna.artifacts.exceptions import ArtifactNotFound

        if artifact_id not in self.objects:
            raise ArtifactNotFound(artifact_id)
        return io.BytesIO(self.objects[artifact_id])

    def write(self, artifact_id, content_body):
        self.objects[artifact_id] = content_body.read()

    def remove(self, artifact_id):
        self.objects.pop(artifact_id)


def test_checkpoints_and_weights_land_under_the_prefix(tmp_path):
    from tuner.service._artifact_store import PrefixedStore
    from tuner.service._checkpoints import ArtifactCheckpointer, upload_weights

    bucket = MemoryStore()
    store = PrefixedStore(bucket, "team/runs")
    study = optuna.create_study()
    trial = study.ask()
    checkpointer = ArtifactCheckpointer(store, "s")
    checkpointer.save(trial, 0, {"epoch": 1, "w": torch.ones(2)})
    artifact = upload_weights(store, trial, {"w": torch.ones(2)}, {})
    assert sorted(bucket.objects) == sorted([f"team/runs/{trial.user_attrs['checkpoint']}", f"team/runs/{artifact}"])
    assert torch.equal(checkpointer.load(trial)["w"], torch.ones(2))
    checkpointer.finish(trial)
    assert list(bucket.objects) == [f"team/runs/{artifact}"]


def test_an_s3_store_with_a_prefix_writes_under_it(monkeypatch):
    pytest.importorskip("boto3")
    from tuner.service._artifact_store import PrefixedStore, open_artifact_store

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # a client needs one; nothing is sent
    store = open_artifact_store("s3://bucket/team/runs")
    assert isinstance(store, PrefixedStore) and store.prefix == "team/runs"
    assert store.store.bucket == "bucket" and store.key("a.pt") == "team/runs/a.pt"
    assert not isinstance(open_artifact_store("s3://bucket"), PrefixedStore)


def test_the_cuda_tagging_is_gone_after_the_test_that_used_it(tmp_path):
    """torch.save tags a CPU tensor as CPU again: the fixture left torch's registry as it was."""
    buffer = __import__("io").BytesIO()
    torch.save(torch.ones(2), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).device.type == "cpu"
    assert all(tagger is not _tag_as_cuda for _, tagger, _ in torch.serialization._package_registry)
