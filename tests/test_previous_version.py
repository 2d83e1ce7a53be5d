"""A study created by the previous version of tuner (before the package layout) opens, reads and continues."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from conftest import cli_invoke

# Made by tuner at commit 7583b79 (the last flat-module version), in an empty folder:
#   tuner run --study v2 --storage sqlite:///v2.db --data digits --model resnet18 --weights none \
#       --image-size 32 --space feature_extraction --n-trials 2 --max-epochs 2 --device cpu -q
FIXTURE = Path(__file__).parent / "data" / "v2_study.db"


@pytest.fixture
def old_study(tmp_path) -> str:
    database = tmp_path / "v2.db"
    shutil.copy(FIXTURE, database)
    return f"sqlite:///{database}"


def test_the_old_study_reads_as_it_was_stored(old_study):
    study = optuna.load_study(study_name="v2", storage=old_study)
    best = study.best_trial

    status = cli_invoke(["status", "--storage", old_study])
    shown = cli_invoke(["best", "--study", "v2", "--storage", old_study, "--format", "json"])

    assert status.exit_code == 0, status.output
    assert "v2" in status.output and "2/2" in status.output, status.output
    assert shown.exit_code == 0, shown.output
    assert f"{best.value:.4f}"[:5] in shown.output and str(best.number) in shown.output, shown.output


def test_the_old_study_continues_with_its_stored_config(old_study, tmp_path):
    extended = cli_invoke(["extend", "--study", "v2", "--n-trials", "3", "--storage", old_study])
    worked = cli_invoke(["worker", "--study", "v2", "--storage", old_study, "--device", "cpu",
                         "--artifacts", str(tmp_path / "artifacts"), "--quiet"])

    assert extended.exit_code == 0, extended.output
    assert worked.exit_code == 0, worked.output
    assert "finished 3/3 trials" in worked.output, worked.output
    trials = optuna.load_study(study_name="v2", storage=old_study).get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    # The stored --max-epochs 2 still caps the new trial.
    assert 1 <= trials[2].user_attrs["epochs_run"] <= 2
    assert trials[2].user_attrs["stop_reason"] in ("completed", "early_stopped", "pruned")
