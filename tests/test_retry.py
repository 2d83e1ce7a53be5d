"""The retry of a dead worker's trial happens once, even when two workers both failed the trial
(after a reconnect, see test_reliability.py for the race itself with two processes)."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from conftest import drop_connection_once
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.space._space import load_space
from tuner.service._storage import RETRY_OF_ATTR, RetryStaleTrial, StorageSettings, open_storage
from tuner.config import StudyConfig
from tuner.service._open import create_study

PARAMS = {"freeze": "head", "lr": 1e-3, "optimizer": "adam", "batch_size": 64, "epochs": 2}


def tiny_study(url: str, space, artifacts: str, n_trials: int) -> optuna.Study:
    loaded = load_space(str(space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=n_trials, max_epochs=2, artifacts=artifacts,
                         warm_start=False)
    return create_study(open_storage(StorageSettings(url=url), heartbeat=False), "s", config, note="# test")


def failed_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """A trial whose worker died, as Optuna's stale-trial check leaves it: FAIL, its attrs kept."""
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"lineage": 0, "epoch": 1}))
    return study.get_trials()[-1]


def test_the_stale_trial_callback_queues_one_retry_however_many_workers_failed_the_trial(
        storage_url, tiny_space, tmp_path):
    study = tiny_study(storage_url, tiny_space, str(tmp_path / "artifacts"), n_trials=2)
    dead = failed_trial(study)
    callback = RetryStaleTrial(max_retry=3)
    callback(study, dead)
    callback(study, dead)  # the second worker that believes it failed the trial

    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs, t.system_attrs["failed_trial"], t.system_attrs["retry_history"]) for t in waiting] == [
        ({"lineage": 0, "epoch": 1, RETRY_OF_ATTR: 0}, 0, [0])]
    # Optuna's own reading of the retry still works.
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(waiting[0]) == 0


def test_the_stale_trial_callback_keeps_the_max_retry_count(storage_url, tiny_space, tmp_path):
    study = tiny_study(storage_url, tiny_space, str(tmp_path / "artifacts"), n_trials=2)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, user_attrs={"lineage": 0}, system_attrs={"failed_trial": 0, "retry_history": [0]}))
    RetryStaleTrial(max_retry=1)(study, study.get_trials()[-1])  # its second retry: one too many
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_a_worker_drops_the_second_of_two_retries_of_one_trial(storage_url, tiny_space, tmp_path):
    """Two callbacks that ran at the same moment leave two retries of one trial: the worker
    trains the first and drops the second, before training, uncounted. It used to train both,
    over the budget, the same lineage finished twice."""
    study = tiny_study(storage_url, tiny_space, str(tmp_path / "artifacts"), n_trials=1)
    failed_trial(study)
    for _ in range(2):
        study.enqueue_trial(PARAMS, user_attrs={"lineage": 0, RETRY_OF_ATTR: 0}, skip_if_exists=False)

    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", storage_url, "--device", "cpu"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "finished 1/1 trial (1 run by this process)"
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [
        (0, TrialState.FAIL), (1, TrialState.COMPLETE), (2, TrialState.FAIL)]
    assert trials[2].user_attrs["duplicate_of"] == 1
    assert trials[2].intermediate_values == {} and "epoch" not in trials[2].user_attrs


# Drops the connection of racer_a inside its first RUNNING -> COMPLETE update, once another
# connection waits on the trial's row lock: the update never commits.
DROP_COMPLETE = drop_connection_once("COMPLETE", waits=600)


def test_a_finish_cut_off_by_a_dropped_connection_is_not_taken_for_done_when_another_worker_failed_the_trial(
        postgres_url):
    """The worker's COMPLETE never committed; meanwhile another worker failed the trial as stale.
    The reconnected retry finds it finished: `retrying` called that success, so the worker took a
    trial for complete that the study holds as failed (and retries elsewhere)."""
    racer = open_storage(StorageSettings(url=f"{postgres_url}?application_name=racer_a"), heartbeat=False)
    study = optuna.create_study(storage=racer, direction="maximize")
    trial = study.ask()
    trial_id = racer.get_trial_id_from_study_id_trial_number(racer.get_study_id_from_name(study.study_name), 0)
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        for statement in DROP_COMPLETE:
            connection.exec_driver_sql(statement)
    outcome = {}

    def finish() -> None:
        try:
            outcome["returned"] = racer.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
        except optuna.exceptions.UpdateFinishedTrialError as error:
            outcome["raised"] = error

    finishing = threading.Thread(target=finish)
    finishing.start()
    for _ in range(300):
        with engine.connect() as connection:
            if connection.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                          "'racer_a' AND wait_event = 'PgSleep'").scalar():
                break
        time.sleep(0.1)
    else:
        pytest.fail("the racer's update never reached the trigger")
    other = optuna.storages.RDBStorage(postgres_url)  # the worker that found the trial stale
    assert other.set_trial_state_values(trial_id, TrialState.FAIL)
    finishing.join(timeout=60)

    assert "raised" in outcome, outcome
    assert study.trials[trial.number].state == TrialState.FAIL
