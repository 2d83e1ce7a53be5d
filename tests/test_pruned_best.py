"""A pruned trial's best epoch counts for the study's best (issue 22): `tuner best`, `status`, `studies`, the
closing summary, the report and the kept weights name it, and `retrain` trains its params for `best_epoch`
epochs. Diverged and out-of-memory trials never count. Real Optuna studies in SQLite, through the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import HEAD_ONLY_SPACE, cli_invoke
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tuner.config import StudyConfig
from tuner.service._artifact_store import BEST_WEIGHTS_ATTR
from tuner.service._checkpoints import prune_weights
from tuner.service._open import create_study
from tuner.service._storage import StorageSettings, open_storage
from tuner.space._space import load_space

# The head-only test space with room for a trial pruned at epoch 3 whose best epoch, 2, is in the range.
SPACE = HEAD_ONLY_SPACE.replace("    high: 3\n", "    high: 4\n")
DISTRIBUTIONS = {"freeze": CategoricalDistribution(["head"]), "lr": FloatDistribution(1e-3, 1e-2, log=True),
                 "optimizer": CategoricalDistribution(["adam", "sgd"]), "batch_size": CategoricalDistribution([64, 128]),
                 "epochs": IntDistribution(2, 4)}
FIXED = {"loss": "cross_entropy", "patience": 5}


def study_at(tmp_path: Path, name: str = "s", n_trials: int = 10) -> tuple[str, optuna.Study]:
    """An empty tuner study of SPACE on digits at 16 px (nothing trained); its URL and the study."""
    assert "    high: 4\n" in SPACE
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(str(tmp_path / "space.yaml"))
    config = StudyConfig(space_name=space.name, space_text=space.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=n_trials, warm_start=False)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(StorageSettings(url=url), heartbeat=False)
    return url, create_study(storage, name, config, note="# test")


def add(study: optuna.Study, state: TrialState, reason: str, metrics: list[float], *, epochs: int,
        best_value: bool = True, lr: float = 5e-3, **attrs) -> None:
    """A trial as a worker records it: params, per-epoch reports and history, and the objective's attrs."""
    number = len(study.trials)
    best_epoch = max(range(len(metrics)), key=lambda i: (metrics[i], -i)) + 1
    user_attrs = {"stop_reason": reason, "epochs_run": len(metrics), "best_epoch": best_epoch, "lineage": number,
                  "fixed_params": FIXED,
                  "history": [{"epoch": e, "metric": m, "val_loss": 1.0, "train_loss": 1.0}
                              for e, m in enumerate(metrics, 1)], **attrs}
    if best_value:
        user_attrs["best_value"] = max(metrics)
    study.add_trial(create_trial(
        state=state, value=max(metrics) if state == TrialState.COMPLETE else None,
        params={"freeze": "head", "lr": lr, "optimizer": "adam", "batch_size": 64, "epochs": epochs},
        distributions=DISTRIBUTIONS, intermediate_values=dict(enumerate(metrics, 1)), user_attrs=user_attrs))


def mixed(study: optuna.Study, *, best_value: bool = True) -> None:
    """Trial 0 completed at 0.5; trial 1 pruned at epoch 3 of 4 with its best, 0.8, at epoch 2; trials 2 and 3
    pruned as diverged (0.9) and out of memory (0.95): they must never be the best."""
    add(study, TrialState.COMPLETE, "completed", [0.5, 0.4], epochs=2)
    add(study, TrialState.PRUNED, "pruned", [0.6, 0.8, 0.7], epochs=4, best_value=best_value, lr=2e-3)
    add(study, TrialState.PRUNED, "diverged", [0.9], epochs=3)
    add(study, TrialState.PRUNED, "oom", [0.95], epochs=3)


def test_best_names_a_pruned_trial_whose_best_epoch_beats_every_completed_trial(tmp_path):
    url, study = study_at(tmp_path)
    mixed(study)

    table = cli_invoke(["best", "--study", "s", "--storage", url])
    summary = cli_invoke(["best", "--study", "s", "--storage", url, "--format", "json"])

    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines() == [
        "study s: best val_accuracy = 0.8000 (trial 1, pruned at epoch 3, best epoch 2)",
        "  batch_size: 64",
        "  epochs: 2 (its best epoch; pruned at epoch 3 of 4)",
        "  freeze: head",
        "  loss: cross_entropy",
        "  lr: 0.002",
        "  optimizer: adam",
        "  patience: 5",
    ]
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.stdout) == {
        "study": "s", "metric": "val_accuracy", "value": 0.8, "number": 1, "state": "pruned", "epochs_run": 3,
        "params": {"batch_size": 64, "epochs": 2, "freeze": "head", "loss": "cross_entropy", "lr": 0.002,
                   "optimizer": "adam", "patience": 5},
        "best_epoch": 2, "epochs": {"sampled": 4, "planned": 4, "trained": 3, "stop_reason": "pruned"},
    }


def test_status_and_studies_name_the_same_pruned_best(tmp_path):
    url, study = study_at(tmp_path)
    mixed(study)

    status = cli_invoke(["status", "--storage", url])
    report = cli_invoke(["status", "--storage", url, "--format", "json"])
    studies = cli_invoke(["studies", "--storage", url, "--format", "json"])

    assert status.exit_code == 0, status.output
    assert status.stdout.splitlines()[1] == ("study s: 4/10 finished [complete 1, pruned 3]; best val_accuracy "
                                             "0.8000 (trial 1, pruned at epoch 3, best epoch 2)")
    assert json.loads(report.stdout)["studies"][0]["best"] == {
        "value": 0.8, "number": 1, "state": "pruned", "epochs_run": 3, "best_epoch": 2}
    assert studies.exit_code == 0, studies.output
    assert json.loads(studies.stdout)["studies"][0]["best"] == 0.8


def test_the_yaml_of_a_pruned_best_runs_its_params_for_its_best_epoch_and_enqueues(tmp_path):
    url, study = study_at(tmp_path)
    mixed(study)

    spec = cli_invoke(["best", "--study", "s", "--storage", url, "--format", "yaml"])

    assert spec.exit_code == 0, spec.output
    doc = yaml.safe_load(spec.stdout)
    assert doc["description"] == ("Best trial 1 of study s: val_accuracy = 0.8000 "
                                  "(pruned at epoch 3, best epoch 2).")
    assert doc["params"]["epochs"] == {"type": "fixed", "value": 2}
    assert doc["params"]["lr"] == {"type": "fixed", "value": 0.002}
    (tmp_path / "best.yaml").write_text(spec.stdout)
    queued = cli_invoke(["enqueue", "--study", "s", "--storage", url, "--params", str(tmp_path / "best.yaml")])
    assert queued.exit_code == 0, queued.output
    (waiting,) = optuna.load_study(study_name="s", storage=url).get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == {"freeze": "head", "lr": 0.002, "optimizer": "adam",
                                                  "batch_size": 64, "epochs": 2}


def test_a_study_recorded_before_best_value_ranks_a_pruned_trial_by_its_history(tmp_path):
    """The previous version wrote no best_value: the pruned trial's history has its best epoch."""
    url, study = study_at(tmp_path)
    mixed(study, best_value=False)
    assert "best_value" not in study.trials[1].user_attrs

    shown = cli_invoke(["best", "--study", "s", "--storage", url, "--format", "json"])

    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert (summary["number"], summary["value"], summary["best_epoch"], summary["params"]["epochs"]) == (1, 0.8, 2, 2)


def best_line(url: str):
    result = cli_invoke(["best", "--study", "s", "--storage", url])
    return result.exit_code, (result.stdout or result.stderr).splitlines()[0]


def test_diverged_and_out_of_memory_trials_never_count_and_ties_go_to_the_completed_trial(tmp_path):
    url, study = study_at(tmp_path)
    add(study, TrialState.PRUNED, "diverged", [0.9], epochs=3)
    add(study, TrialState.PRUNED, "oom", [0.95], epochs=3)
    assert best_line(url) == (1, "Error: study 's' has no completed trial yet")
    add(study, TrialState.PRUNED, "pruned", [0.3, 0.7, 0.6], epochs=4)  # 2
    add(study, TrialState.PRUNED, "pruned", [0.7, 0.6], epochs=4)  # 3: ties 2, with a higher number
    assert best_line(url) == (0, "study s: best val_accuracy = 0.7000 (trial 2, pruned at epoch 3, best epoch 2)")
    add(study, TrialState.COMPLETE, "early_stopped", [0.7, 0.5], epochs=4)  # 4: ties them, and completed
    assert best_line(url) == (0, "study s: best val_accuracy = 0.7000 (trial 4)")


def test_the_closing_summary_ranks_a_pruned_trial_at_its_best_epoch(tmp_path):
    url, study = study_at(tmp_path, n_trials=4)
    mixed(study)

    result = cli_invoke(["worker", "--study", "s", "--storage", url, "--quiet"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2:6] == [
        "trials: complete 1, pruned 3",
        "top 2 of 1 completed and 1 pruned trial (each at its best epoch) by val_accuracy:",
        "  0.8000  trial 1 (pruned at epoch 3, best epoch 2): batch_size=64 epochs=4 freeze=head lr=0.002",
        "      optimizer=adam",
    ]
    assert lines[6] == "  0.5000  trial 0: batch_size=64 epochs=2 freeze=head lr=0.005 optimizer=adam"
    assert f"  tuner retrain --study s --storage {url} --out model" in lines


def test_the_report_names_the_pruned_best_with_its_best_epochs_value(tmp_path):
    url, study = study_at(tmp_path)
    mixed(study)
    out = tmp_path / "report"

    result = cli_invoke(["report", "--study", "s", "--storage", url, "--out", str(out)])

    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    assert "Best val_accuracy: <b>0.8</b> (trial 1, pruned at epoch 3, best epoch 2)." in index
    assert "<p>Trial 1: val_accuracy <b>0.8</b> (pruned at epoch 3, best epoch 2:" in index


def test_only_the_pruned_bests_weights_stay(tmp_path):
    """A pruned trial uploads its best epoch's weights when it beats the study's best: they are the ones kept."""
    (tmp_path / "store").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "store"))
    for name in ("weights-0", "weights-1", "weights-2"):
        store.write(name, io.BytesIO(b"weights"))
    url, study = study_at(tmp_path)
    add(study, TrialState.COMPLETE, "completed", [0.5], epochs=2, **{BEST_WEIGHTS_ATTR: "weights-0"})
    add(study, TrialState.PRUNED, "pruned", [0.6, 0.8, 0.7], epochs=4, **{BEST_WEIGHTS_ATTR: "weights-1"})
    add(study, TrialState.PRUNED, "diverged", [0.9], epochs=3, **{BEST_WEIGHTS_ATTR: "weights-2"})
    assert best_line(url)[1].startswith("study s: best val_accuracy = 0.8000 (trial 1,")

    prune_weights(store, study.get_trials(), 1)

    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["weights-1"]


def test_retrain_trains_a_pruned_best_for_its_best_epoch(tmp_path):
    url, study = study_at(tmp_path)
    mixed(study)
    out = tmp_path / "model"

    result = cli_invoke(["retrain", "--study", "s", "--storage", url, "--out", str(out), "--device", "cpu"])

    assert result.exit_code == 0, result.output
    description = json.loads((out / "model.json").read_text())
    assert result.stdout.startswith(f"trained resnet18 for 2 epochs on {description['train_images']} images: ")
    assert ("retraining trial 1 (pruned at epoch 3, best epoch 2) of study s: resnet18, 2 epochs on train"
            in result.stderr)
    assert (description["trial"], description["trial_value"]) == (1, 0.8)
    assert (description["epochs"], description["epochs_run"]) == (2, 2)
    assert description["params"] == {"freeze": "head", "lr": 0.002, "optimizer": "adam", "batch_size": 64,
                                     "epochs": 2, **FIXED}
