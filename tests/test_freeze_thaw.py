"""Freeze-thaw: which paused trials are promoted, the pass at the promoted rung, and a real worker resuming one."""

from __future__ import annotations

import math

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial

from tuner.cli import cli
from tuner.config import StudyConfig
from tuner.errors import TunerError
from tuner.search._freeze_thaw import PROMOTED_AT_ATTR, PROMOTED_FROM_ATTR, PromotedPass, is_paused, promotable
from tuner.service._artifact_store import CHECKPOINT_ATTR
from tuner.service._open import create_study
from tuner.service._storage import StorageSettings, open_storage
from tuner.space._space import load_space


def trial(values: dict[int, float], *, state=TrialState.PRUNED, reason="pruned", epochs=9, **attrs):
    """A finished trial with these per-epoch values; a PRUNED one stopped by the pruner by default."""
    user_attrs = {"stop_reason": reason, "epochs": epochs, **attrs}
    value = max(values.values()) if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, intermediate_values=values, user_attrs=user_attrs)


def study_of(*trials, direction="maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for t in trials:
        study.add_trial(t)
    return study


def numbers(study: optuna.Study, reduction_factor: int = 3) -> list[int]:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return [t.number for t in promotable(study.get_trials(), reduction_factor, maximize)]


DONE = TrialState.COMPLETE


@pytest.mark.parametrize("case, trials, expected", [
    # Three trials reached epoch 1: the top third is the best one, paused trial 0.
    ("best of three at its rung", [trial({1: 0.7}), trial({1: 0.5, 3: 0.6}, state=DONE), trial({1: 0.4}, reason="x")], [0]),
    ("second of three", [trial({1: 0.6}), trial({1: 0.7}, state=DONE), trial({1: 0.4}, state=DONE)], []),
    # Six trials: the top two; paused trial 0 is second.
    ("second of six", [trial({1: 0.6})] + [trial({1: v}, state=DONE) for v in (0.7, 0.1, 0.2, 0.3, 0.4)], [0]),
    ("fewer than reduction_factor trials", [trial({1: 0.9}), trial({1: 0.1}, state=DONE)], []),
    ("diverged is not paused", [trial({1: 0.9}, reason="diverged")] + [trial({1: 0.1}, state=DONE)] * 2, []),
    ("out of memory is not paused", [trial({1: 0.9}, reason="oom")] + [trial({1: 0.1}, state=DONE)] * 2, []),
    ("stopped at its last epoch", [trial({1: 0.9}, epochs=1)] + [trial({1: 0.1}, state=DONE)] * 2, []),
    ("already promoted", [trial({1: 0.9}), trial({1: 0.9, 2: 0.9}, state=DONE, **{PROMOTED_FROM_ATTR: 0}),
                          trial({1: 0.1}, state=DONE), trial({1: 0.1}, state=DONE)], []),
    ("a NaN at the rung", [trial({1: math.nan})] + [trial({1: 0.1}, state=DONE)] * 2, []),
])
def test_promotable_ranks_a_paused_trial_in_its_rung(case, trials, expected):
    assert numbers(study_of(*trials)) == expected, case


def test_a_lineage_counts_once_at_a_rung():
    """Retries and continuations re-report their parent's epochs: counted once per lineage,
    this rung has three values (top one: 0.9), not six (top two: 0.9 and 0.5)."""
    copies = [trial({1: 0.5, 3: 0.5}, state=DONE, lineage=0) for _ in range(3)]
    study = study_of(trial({1: 0.5}, lineage=0), *copies, trial({1: 0.9}, state=DONE), trial({1: 0.1}, state=DONE))
    assert numbers(study) == []


def test_the_highest_rung_and_the_best_value_come_first():
    trials = [trial({1: 0.6}), trial({1: 0.7}), trial({1: 0.8, 2: 0.8, 3: 0.5})]
    trials += [trial({1: v}, state=DONE) for v in (0.1, 0.1, 0.1, 0.1, 0.1, 0.1)]
    trials += [trial({1: 0.1, 2: 0.1, 3: v}, state=DONE) for v in (0.1, 0.2)]
    # Epoch 3: three lineages, trial 2 (0.5) is the top one. Epoch 1: eleven, the top three are
    # 0.8 (trial 2, not paused there), 0.7 and 0.6.
    assert numbers(study_of(*trials)) == [2, 1, 0]


def test_with_the_best_signal_a_paused_trial_ranks_by_its_best_epoch_so_far():
    """Trial 0 dipped at epoch 3 (0.5) after the rung's best epoch 2 (0.9): the last value ranks
    it below the other two, its best above them, as --rung-signal best's pruner ranks it."""
    trials = [trial({1: 0.4, 2: 0.9, 3: 0.5}), trial({1: 0.6, 2: 0.6, 3: 0.6}, state=DONE),
              trial({1: 0.7, 2: 0.7, 3: 0.7}, state=DONE)]
    study = study_of(*trials)
    assert numbers(study) == []
    assert [t.number for t in promotable(study.get_trials(), 3, True, signal="best")] == [0]


def test_minimize_promotes_the_lowest():
    study = study_of(trial({1: 0.2}), trial({1: 0.5}, state=DONE), trial({1: 0.9}, state=DONE), direction="minimize")
    assert numbers(study) == [0]


def test_can_resume_leaves_out_a_trial_without_a_checkpoint():
    study = study_of(trial({1: 0.9}), trial({1: 0.1}, state=DONE), trial({1: 0.2}, state=DONE))
    kept = promotable(study.get_trials(), 3, True, can_resume=lambda t: CHECKPOINT_ATTR in t.user_attrs)
    assert kept == []


def test_is_paused_needs_a_pruned_trial():
    assert is_paused(trial({1: 0.5})) and not is_paused(trial({1: 0.5}, state=DONE))


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_promoted_trial_passes_the_rung_it_was_promoted_at_and_no_other():
    study = optuna.create_study(direction="maximize", pruner=PromotedPass(AlwaysPrune()))
    resumed = study.ask()
    resumed.set_user_attr(PROMOTED_AT_ATTR, 1)
    resumed.report(0.5, 1)
    assert not resumed.should_prune()
    resumed.report(0.6, 2)
    assert resumed.should_prune()
    fresh = study.ask()
    fresh.report(0.5, 1)
    assert fresh.should_prune()


@pytest.mark.parametrize("pruner", ["hyperband", "median", "none"])
def test_freeze_thaw_needs_asha(pruner):
    with pytest.raises(TunerError) as error:
        StudyConfig(space_name="s", space_text="", data="d", pruner=pruner, freeze_thaw=True)
    assert str(error.value) == f"--freeze-thaw pauses and promotes ASHA's trials: it needs --pruner asha, got {pruner!r}"


def test_the_cli_refuses_freeze_thaw_without_asha_before_writing(tmp_path):
    db = tmp_path / "s.db"
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", f"sqlite:///{db}", "--data", "digits",
                                      "--pruner", "median", "--freeze-thaw"])
    assert result.exit_code == 1, result.output
    assert result.output == "Error: --freeze-thaw pauses and promotes ASHA's trials: it needs --pruner asha, got 'median'\n"
    assert not db.exists()


PARAMS = {"freeze": "last_blocks", "lr": 1e-3, "backbone_lr": 1e-4, "optimizer": "adam", "batch_size": 64, "epochs": 3}


def study_with_a_rung_ahead(tiny_space, tmp_path, **settings) -> tuple[optuna.Study, str]:
    """A study whose next trial (number 8, PARAMS) is pruned after epoch 1 by two trials that
    ASHA saw at its first rung with a score no real trial reaches; six more it did not see (no
    rung record) all scored worse there: with them the next trial ranks third of nine."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    loaded = load_space(str(tiny_space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18",
                         weights="none", image_size=16, max_epochs=3, artifacts=str(tmp_path / "artifacts"),
                         warm_start=False, pruner="asha", **settings)
    study = create_study(open_storage(StorageSettings(url=url), heartbeat=False), "s", config, note="# test")
    for _ in range(2):
        study.add_trial(create_trial(state=DONE, value=2.0, intermediate_values={1: 2.0},
                                     system_attrs={"completed_rung_0": 2.0}))
    for _ in range(6):
        study.add_trial(create_trial(state=DONE, value=-1.0, intermediate_values={1: -1.0}))
    study.enqueue_trial(PARAMS)
    return study, url


def checkpoints_of_trial_8(tmp_path) -> list:
    return [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file() and "-t8-" in p.name]


def test_a_worker_pauses_a_pruned_trial_and_resumes_it_from_its_checkpoint_once_promoted(tiny_space, tmp_path):
    """Trial 8 is pruned after epoch 1, keeps its checkpoint, and ranks in the top third at
    epoch 1: the worker queues its continuation, which resumes after epoch 1 instead of
    training again, and completes."""
    study, url = study_with_a_rung_ahead(tiny_space, tmp_path, n_trials=10, freeze_thaw=True)

    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", url, "--device", "cpu"])

    assert result.exit_code == 0, result.output
    paused, resumed = study.get_trials()[8:]
    assert (paused.state, paused.user_attrs["stop_reason"], paused.last_step) == (TrialState.PRUNED, "pruned", 1)
    assert resumed.state == TrialState.COMPLETE
    assert resumed.params == paused.params
    assert (resumed.user_attrs[PROMOTED_FROM_ATTR], resumed.user_attrs["resumed_from_epoch"]) == (8, 1)
    assert resumed.user_attrs["lineage"] == paused.user_attrs["lineage"] == 8
    assert [row["epoch"] for row in resumed.user_attrs["history"]] == [1, 2, 3]
    assert resumed.intermediate_values[1] == paused.intermediate_values[1]
    # Both checkpoints are gone once the lineage completed.
    assert not checkpoints_of_trial_8(tmp_path)


def test_without_freeze_thaw_a_pruned_trial_ends_for_good(tiny_space, tmp_path):
    study, url = study_with_a_rung_ahead(tiny_space, tmp_path, n_trials=9)

    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", url, "--device", "cpu"])

    assert result.exit_code == 0, result.output
    assert [t.state for t in study.get_trials()[8:]] == [TrialState.PRUNED]
    assert not checkpoints_of_trial_8(tmp_path)


def test_a_paused_trial_left_unpromoted_frees_its_checkpoint_once_the_study_is_over(tiny_space, tmp_path):
    """With the budget spent by the paused trial itself, nothing can promote it any more."""
    study, url = study_with_a_rung_ahead(tiny_space, tmp_path, n_trials=9, freeze_thaw=True)

    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", url, "--device", "cpu"])

    assert result.exit_code == 0, result.output
    (paused,) = study.get_trials()[8:]
    assert paused.state == TrialState.PRUNED and paused.user_attrs.get(CHECKPOINT_ATTR)
    assert not checkpoints_of_trial_8(tmp_path)
