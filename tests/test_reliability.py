"""Reliability with real worker processes and a real database: kill -9, database restart.
(Racing workers and the exact budget under load are in test_workers.py.)

Each test prints what it tried and what held (run pytest with -s to see it in the log).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import drop_connection_once, open_connections, opened_storage, read_trials
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState
from PIL import Image

from tuner.cli import cli

# shufflenet_v2_x0_5 (0.3 M parameters, resnet18 has 11 M): the same code paths, with epochs
# and checkpoints many times cheaper; more epochs keep a trial long enough to be interrupted.
SPACE = """\
settings: {{model: shufflenet_v2_x0_5, image_size: 16}}
params:
  freeze: {freeze}
  unfreeze_blocks: {{type: fixed, value: 1, when: {{freeze: last_blocks}}}}
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  backbone_lr: {{type: float, low: 1.0e-5, high: 1.0e-4, log: true, when: {{freeze: last_blocks}}}}
  optimizer: {{type: categorical, choices: [adam, sgd]}}
  batch_size: {{type: fixed, value: 16}}
  epochs: {epochs}
  patience: {{type: fixed, value: 10}}
"""


@pytest.fixture
def small_images(tmp_path) -> Path:
    """Two learnable classes of 16 px images: epochs take a fraction of a second."""
    rng = np.random.default_rng(0)
    root = tmp_path / "small"
    for label, base in (("dark", 60), ("light", 190)):
        (root / label).mkdir(parents=True)
        for index in range(40):
            pixels = np.clip(rng.normal(base, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return root


def create_study(url: str, tmp_path: Path, data: Path, *, n_trials: int, freeze: str, epochs: str,
                 max_retry: int = 10) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(freeze=freeze, epochs=epochs))
    result = CliRunner().invoke(cli, [
        "create", "--study", "s", "--storage", url, "--space", str(space), "--data", str(data),
        "--weights", "none", "--n-trials", str(n_trials), "--pruner", "none", "--no-warm-start",
        "--heartbeat-interval", "1", "--grace-period", "3", "--max-retry", str(max_retry),
        "--artifacts", str(tmp_path / "artifacts"),
    ])
    assert result.exit_code == 0, result.output


class Workers:
    """Real `tuner worker` processes; every one is killed at teardown whatever happens."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs, self.procs = url, logs, []
        logs.mkdir(exist_ok=True)

    def start(self, url: str | None = None) -> subprocess.Popen:
        log = open(self.logs / f"worker{len(self.procs)}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner", "worker", "--study", "s", "--storage", url or self.url,
             "--device", "cpu", "--timeout", "600"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def kill_all(self) -> None:
        for proc in self.alive():
            proc.kill()
            proc.wait(timeout=30)

    def output(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("*.log")))


@pytest.fixture
def workers(tmp_path, storage_url):
    pool = Workers(storage_url, tmp_path / "logs")
    yield pool
    pool.kill_all()


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return read_trials(url, "s")


def finished(all_trials) -> list[optuna.trial.FrozenTrial]:
    return [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def assert_budget_held(all_trials, budget: int) -> None:
    done = finished(all_trials)
    assert len(done) == budget
    assert not [t.number for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lineages = [t.user_attrs["lineage"] for t in done]
    assert len(lineages) == len(set(lineages)), "a trial finished twice"
    for trial in done:
        epochs = trial.user_attrs["epochs_run"]
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1)), trial.number
    for trial in all_trials:
        if trial.user_attrs.get("over_budget"):
            assert trial.state == TrialState.FAIL and not trial.intermediate_values


def wait_for_checkpointed_trial(url: str, pids: set[int], timeout: float = 120, *,
                                max_epoch: int | None = None) -> tuple[int, int, int]:
    """(pid, trial number, epoch) of a running trial with at least one checkpointed epoch.

    With `max_epoch`, only a trial of its own lineage (not a resumed one: those carry their
    original's epoch and checkpoint attrs from the start) at most that far in, so that a
    signal sent now still finds it running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in trials(url):
            worker = trial.user_attrs.get("worker", "")
            epoch = trial.user_attrs.get("epoch") or 0
            if max_epoch is not None and (epoch > max_epoch or "retry_of" in trial.user_attrs):
                continue
            if trial.state == TrialState.RUNNING and epoch >= 1 and trial.user_attrs.get("checkpoint"):
                pid = int(worker.split(":")[1])
                if pid in pids:
                    return pid, trial.number, epoch
        time.sleep(0.2)
    raise AssertionError("no running trial reached a checkpoint in time")


def kill_mid_trial(url: str, workers: Workers) -> tuple[int, int] | None:
    """kill -9 a worker with a checkpointed trial in flight: (that trial, its checkpointed epoch),
    read after the kill, or None if the trial had just finished (the worker died between trials)."""
    pid, _, _ = wait_for_checkpointed_trial(url, {p.pid for p in workers.alive()})
    os.kill(pid, signal.SIGKILL)
    next(p for p in workers.procs if p.pid == pid).wait(timeout=30)
    # RUNNING until the grace period (3 s) has passed without a heartbeat: nobody retried it yet.
    lost = [t for t in trials(url) if t.state == TrialState.RUNNING
            and t.user_attrs.get("worker", "").split(":")[1:2] == [str(pid)]]
    if not lost or (lost[0].user_attrs.get("epoch") or 0) < 1:
        return None
    return lost[0].number, lost[0].user_attrs["epoch"]


def test_kill_9_workers_repeatedly_loses_no_trial_and_no_checkpointed_epoch(storage_url, tmp_path, small_images, workers):
    epochs = 8
    create_study(storage_url, tmp_path, small_images, n_trials=4, freeze="{type: fixed, value: last_blocks}",
                 epochs=f"{{type: fixed, value: {epochs}}}")
    for _ in range(2):
        workers.start()
    rng = random.Random(0)
    killed = []
    while len(killed) < 2:
        hit = kill_mid_trial(storage_url, workers)
        if hit is not None:
            killed.append(hit)
        time.sleep(rng.uniform(0, 0.5))
        workers.start()  # a replacement, as a supervisor or an orchestrator would start
    workers.wait(timeout=400)
    all_trials = trials(storage_url)
    assert_budget_held(all_trials, 4)
    by_lineage = {t.user_attrs["lineage"]: t for t in finished(all_trials)}
    for number, epoch in killed:
        original = next(t for t in all_trials if t.number == number)
        assert original.state == TrialState.FAIL
        retry = by_lineage[original.user_attrs["lineage"]]
        # Resumed from the last checkpoint: at most the epoch in flight was redone.
        assert retry.user_attrs["resumed_from_epoch"] >= epoch
        assert retry.user_attrs["epochs_run"] == epochs
    print(f"\n[kill -9 {storage_url.split(':')[0]}] killed workers mid-trial {len(killed)} times "
          f"(trial, checkpointed epoch: {killed}); every killed trial resumed from its checkpoint; "
          f"{len(finished(all_trials))}/4 finished, 0 lost")


def test_a_worker_frozen_past_the_grace_period_drops_its_retried_trial_and_goes_on(
        storage_url, tmp_path, small_images, workers):
    """SIGSTOP stands in for a process frozen by the OS (a swap storm, a paused VM), or a database
    outage longer than the grace period: no heartbeat for over 3 s. Another worker fails the
    trial and resumes its retry from the checkpoint. The frozen worker, once it wakes, must drop
    the trial and go on: Optuna's tell of the finished trial used to end it with a traceback."""
    create_study(storage_url, tmp_path, small_images, n_trials=2, freeze="{type: fixed, value: last_blocks}",
                 epochs="{type: fixed, value: 30}")
    frozen = workers.start()
    _, number, _ = wait_for_checkpointed_trial(storage_url, {frozen.pid})
    freeze_between_writes(frozen.pid, storage_url)
    try:
        time.sleep(4)  # past the grace period
        workers.start()
        deadline = time.monotonic() + 120
        # Taken by the second worker: running, or already finished when its few remaining epochs
        # ran between two looks (seen on an idle machine).
        while not [t for t in trials(storage_url) if t.state != TrialState.WAITING and t.number != number
                   and t.user_attrs.get("lineage") == number]:
            assert time.monotonic() < deadline, "the second worker never resumed the frozen worker's trial"
            time.sleep(0.2)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    workers.wait(timeout=300)

    assert [p.returncode for p in workers.procs] == [0, 0], workers.output()
    all_trials = trials(storage_url)
    assert_budget_held(all_trials, 2)
    assert next(t for t in all_trials if t.number == number).state == TrialState.FAIL
    log = (workers.logs / "worker0.log").read_text()
    assert f"trial {number} was ended by another worker: no heartbeat from this one for 3 s" in log, log
    assert "Traceback" not in log, log
    print(f"\n[frozen worker {storage_url.split(':')[0]}] trial {number} retried elsewhere while its worker "
          f"was stopped; that worker went on; {len(finished(all_trials))}/2 finished")


def freeze_between_writes(pid: int, url: str) -> None:
    """SIGSTOP `pid` at a moment it holds no open transaction. Frozen inside one, it would keep
    its locks (SQLite's file lock, PostgreSQL's row lock on its trial) and block every other
    worker: what this test is about is a worker frozen while it trains."""
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        if not in_transaction(url):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker was inside a transaction every time it was frozen")


def in_transaction(url: str) -> bool:
    """Whether another connection holds a transaction open on the study's database."""
    sqlite = url.startswith("sqlite")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"timeout": 0} if sqlite else {})
    try:
        with engine.connect() as connection:
            if sqlite:
                try:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")  # fails at once if a writer holds the lock
                except sqlalchemy.exc.OperationalError:
                    return True
                connection.exec_driver_sql("ROLLBACK")
                return False
            return connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')").scalar() > 0
    finally:
        engine.dispose()


def test_after_a_hand_back_and_a_dead_worker_the_store_keeps_only_the_best_weights(tmp_path, small_images):
    """A SIGTERM hands one trial back (its lineage resumes elsewhere); a kill -9 with --max-retry 0
    ends another lineage in FAIL, never retried. When the study is over, no lineage can resume:
    the store holds the best trial's weights and nothing else. It used to keep the dead
    lineage's checkpoint and every weights file uploaded by a new best."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # 20 epochs, found at epoch 14 at most: on an idle machine a window of epochs 1-3 of 6 was
    # shorter than one look at the study, and every trial of the second worker slipped through it.
    create_study(url, tmp_path, small_images, n_trials=4, freeze="{type: fixed, value: last_blocks}",
                 epochs="{type: fixed, value: 20}", max_retry=0)
    pool = Workers(url, tmp_path / "logs")
    try:
        first, second = pool.start(), pool.start()
        wait_for_checkpointed_trial(url, {first.pid})
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        # A trial of its own lineage with epochs left: a resumed one, or one about to finish,
        # could complete before the kill lands, and then no lineage would die (seen under load).
        pid, _, _ = wait_for_checkpointed_trial(url, {second.pid}, max_epoch=14)
        os.kill(pid, signal.SIGKILL)
        second.wait(timeout=30)
        pool.start()
        pool.wait(timeout=300)
        assert pool.procs[2].returncode == 0, pool.output()
    finally:
        pool.kill_all()

    all_trials = trials(url)
    assert len(finished(all_trials)) == 4
    assert any(t.user_attrs.get("handed_back") for t in all_trials), "no trial was handed back"
    dead = [t for t in all_trials if t.state == TrialState.FAIL and not t.user_attrs.get("handed_back")
            and not t.user_attrs.get("over_budget")]
    assert dead and all(t.user_attrs.get("checkpoint") for t in dead)  # each had a checkpoint to leak
    with opened_storage(url) as storage:
        best = optuna.load_study(study_name="s", storage=storage).best_value
    # Of trials that tie for the best value only the first to finish uploads weights (and
    # best_trial may name another): the kept file is the best-valued trial's that holds them.
    holders = [t for t in all_trials if t.state == TrialState.COMPLETE and t.value == best
               and "best_weights_artifact" in t.user_attrs]
    kept = holders[0].user_attrs["best_weights_artifact"]
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [kept]
    print(f"\n[artifacts] after a hand-back and a dead lineage: 1 file left in the store (trial {holders[0].number}'s "
          f"best weights); {len(dead)} dead lineage(s) freed")


# Drops the connection of the worker named racer_a inside its first RUNNING -> FAIL update,
# once the other worker waits on that trial's row lock. The update never commits; the other
# worker fails the trial; racer_a reconnects, retries and finds the trial already failed.
DROP_ONCE = drop_connection_once("FAIL", waits=1200)


def test_two_workers_failing_one_stale_trial_across_a_reconnect_retry_it_once(postgres_url, tmp_path, small_images):
    """Two workers find the same dead worker's trial stale. The first one's update to FAIL is cut
    off by a dropped connection before it commits; the second fails the trial and queues its
    retry; the first reconnects and finds the trial already failed. `retrying` took that for its
    own success, so both queued a retry, and the trial trained twice, over the budget."""
    pool = Workers(postgres_url, tmp_path / "logs")
    try:
        create_study(postgres_url, tmp_path, small_images, n_trials=2, freeze="{type: fixed, value: last_blocks}",
                     epochs="{type: fixed, value: 6}")
        engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.begin() as connection:
            for statement in DROP_ONCE:
                connection.exec_driver_sql(statement)
        hit = None
        while hit is None:  # None: the worker died between two trials, leaving none to retry
            assert len(pool.procs) < 3, pool.output()
            pool.start()
            hit = kill_mid_trial(postgres_url, pool)
        number = hit[0]
        time.sleep(3.5)  # past the grace period: the trial is stale for whoever looks first
        racer_log = tmp_path / "logs" / f"worker{len(pool.procs)}.log"
        racer = pool.start(f"{postgres_url}?application_name=racer_a")
        deadline = time.monotonic() + 120
        while not held_in_trigger(engine):
            assert racer.poll() is None and time.monotonic() < deadline, pool.output()
            time.sleep(0.2)
        other = pool.start()
        pool.wait(timeout=300)

        assert [racer.returncode, other.returncode] == [0, 0], pool.output()
        assert "storage unreachable during set_trial_state_values" in racer_log.read_text(), pool.output()
        all_trials = trials(postgres_url)
        assert next(t for t in all_trials if t.number == number).state == TrialState.FAIL
        retries = [t.number for t in all_trials if t.user_attrs.get("lineage") == number and t.number != number
                   and not t.user_attrs.get("duplicate_of")]
        assert len(retries) == 1, [(t.number, t.state.name, t.user_attrs) for t in all_trials]
        assert_budget_held(all_trials, 2)
        print(f"\n[reconnect race] trial {number} failed by two workers across a dropped connection; "
              f"retried once (trial {retries[0]}); 2/2 finished")
    finally:
        pool.kill_all()


def test_polling_a_study_holds_no_database_connection_open(postgres_url):
    """The polls above run several times a second for minutes; each used to keep a connection."""
    with opened_storage(postgres_url) as storage:
        optuna.create_study(study_name="s", storage=storage)
    for _ in range(20):
        assert trials(postgres_url) == []
    assert open_connections(postgres_url) == 0


def held_in_trigger(engine) -> bool:
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'racer_a' "
            "AND wait_event = 'PgSleep'").scalar() > 0


def test_postgresql_restart_mid_study(postgres_url, tmp_path, small_images):
    cluster = postgres_cluster()
    if cluster is None:
        pytest.skip("needs pg_ctlcluster to restart the local PostgreSQL")
    pool = Workers(postgres_url, tmp_path / "logs")
    try:
        create_study(postgres_url, tmp_path, small_images, n_trials=6, freeze="{type: fixed, value: last_blocks}",
                     epochs="{type: fixed, value: 20}")
        pool.start()
        pool.start()
        # Both workers must be mid-trial when the database goes down: a worker still starting
        # up would meet the restart in its first connection, which is not what this tests.
        for process in pool.procs:
            wait_for_checkpointed_trial(postgres_url, {process.pid})
        restart = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
                                 capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stderr
        restarted = datetime.now()  # naive local time, like the trials' datetime_complete
        pool.wait(timeout=400)
        assert [p.returncode for p in pool.procs] == [0, 0], pool.output()
        all_trials = trials(postgres_url)
        assert_budget_held(all_trials, 6)
        # Trials finished after the database came back: the workers rode the restart out,
        # the study had not simply ended before it.
        assert any(t.datetime_complete > restarted for t in finished(all_trials)), all_trials
        print(f"\n[database restart] PostgreSQL restarted mid-study; 2 workers rode it out; "
              f"{len(finished(all_trials))}/6 finished, 0 lost, 0 duplicated")
    finally:
        pool.kill_all()


def postgres_cluster() -> list[str] | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return [versions[-1], "main"] if versions else None
