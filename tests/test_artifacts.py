"""Artifact stores: the dashboard opens every study's own store; superseded best weights are removed.
(The file count of a store after a study with a hand-back and a dead worker is in test_reliability.py.)"""

from __future__ import annotations

import io
import json
import wsgiref.util
from pathlib import Path

import optuna
import optuna_dashboard
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from tuner.service._checkpoints import BEST_WEIGHTS_ATTR, CHECKPOINT_ATTR, ArtifactCheckpointer, prune_weights, upload_weights
from tuner.service._results import dashboard_store
from tuner.space._space import load_space
from tuner.service._storage import StorageSettings, open_storage
from tuner.config import StudyConfig
from tuner.service._open import create_study


def tuner_study(storage, name: str, space: Path, artifacts: Path) -> optuna.Study:
    loaded = load_space(str(space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=2, artifacts=str(artifacts), warm_start=False)
    return create_study(storage, name, config, note=f"# {name}")


def get(app, path: str) -> tuple[str, bytes]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = {}

    def start_response(line, headers, exc_info=None):
        status["line"] = line

    body = b"".join(app(environ, start_response))
    return status["line"], body


def test_the_dashboard_opens_the_artifacts_of_studies_with_different_stores(tiny_space, tmp_path):
    storage = open_storage(StorageSettings(url=f"sqlite:///{tmp_path / 'study.db'}"), heartbeat=False)
    uploaded = {}
    for name in ("first", "second"):
        study = tuner_study(storage, name, tiny_space, tmp_path / f"artifacts-{name}")
        (tmp_path / f"artifacts-{name}").mkdir()
        source = tmp_path / f"{name}.txt"
        source.write_text(f"the artifact of {name}")
        uploaded[name] = upload_artifact(
            artifact_store=FileSystemArtifactStore(str(tmp_path / f"artifacts-{name}")),
            file_path=str(source), study_or_trial=study)

    app = optuna_dashboard.wsgi(storage, artifact_store=dashboard_store(storage, None))

    _, listing = get(app, "/api/studies")
    ids = {s["study_name"]: s["study_id"] for s in json.loads(listing)["study_summaries"]}
    for name, artifact_id in uploaded.items():
        assert get(app, f"/artifacts/{ids[name]}/{artifact_id}") == ("200 OK", f"the artifact of {name}".encode())


def test_dashboard_store_is_none_without_artifacts_and_the_given_folder_with_artifacts(tiny_space, tmp_path):
    storage = open_storage(StorageSettings(url=f"sqlite:///{tmp_path / 'study.db'}"), heartbeat=False)
    assert dashboard_store(storage, None) is None
    store = dashboard_store(storage, str(tmp_path / "given"))
    assert isinstance(store, FileSystemArtifactStore) and (tmp_path / "given").is_dir()


def test_only_the_best_finished_trials_weights_stay_and_a_running_trials_are_left_alone(tmp_path):
    """Racing workers each upload weights when their trial beats the best they saw."""
    store = FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study(direction="maximize")
    weights = {"w": torch.zeros(2)}
    for value in (0.5, 0.7, 0.6):  # 0.6 beat the 0.5 its worker saw, while 0.7 was finishing
        trial = study.ask()
        trial.set_user_attr(BEST_WEIGHTS_ATTR, upload_weights(store, trial, weights, {}))
        study.tell(trial, value)
    dead = study.ask()  # a worker killed after its upload: FAIL
    dead.set_user_attr(BEST_WEIGHTS_ATTR, upload_weights(store, dead, weights, {}))
    study.tell(dead, state=TrialState.FAIL)
    running = study.ask()
    running.set_user_attr(BEST_WEIGHTS_ATTR, upload_weights(store, running, weights, {}))

    prune_weights(store, study.get_trials(), study.best_trial.number)

    kept = {t.user_attrs[BEST_WEIGHTS_ATTR] for t in study.get_trials() if t.number in (1, 4)}
    assert {p.name for p in tmp_path.iterdir()} == kept


def test_of_two_trials_that_tie_for_the_best_the_one_holding_weights_keeps_them(tmp_path):
    """Only the first of two tied trials to finish uploads (a later one must beat it), and
    best_trial may name the other: the study's only best weights must not be removed."""
    store = FileSystemArtifactStore(str(tmp_path))
    store.write("weights-of-trial-1", io.BytesIO(b"weights"))
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))  # finished last, uploaded nothing
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={BEST_WEIGHTS_ATTR: "weights-of-trial-1"}))
    study.add_trial(optuna.trial.create_trial(value=0.4))

    prune_weights(store, study.get_trials(), best_number=0)  # as best_trial may name trial 0

    assert [p.name for p in tmp_path.iterdir()] == ["weights-of-trial-1"]


class CountingStore(FileSystemArtifactStore):
    """A real folder store that also records what was asked to be removed."""

    def __init__(self, folder: str) -> None:
        super().__init__(folder)
        self.removed: list[str] = []

    def remove(self, artifact_id: str) -> None:
        self.removed.append(artifact_id)
        super().remove(artifact_id)


def test_the_sweep_at_the_end_of_a_study_frees_only_the_lineages_that_ended_in_fail(tmp_path):
    store = CountingStore(str(tmp_path))
    checkpointer = ArtifactCheckpointer(store, "s")
    left = checkpointer.key(2, 1)  # a dead worker's last checkpoint, past --max-retry
    (tmp_path / left).write_bytes(b"state")
    trials = [
        optuna.trial.create_trial(state=state, value=value, user_attrs={
            "lineage": number, "epoch": 1, CHECKPOINT_ATTR: checkpointer.key(number, 1)})
        for number, (state, value) in enumerate([(TrialState.COMPLETE, 0.5), (TrialState.PRUNED, None),
                                                  (TrialState.FAIL, None)])
    ]
    checkpointer.sweep(trials)
    assert store.removed == [left, checkpointer.key(2, 2)]
    assert list(tmp_path.iterdir()) == []
