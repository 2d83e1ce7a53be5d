"""Real worker processes (`python -m tuner worker ...`) sharing studies in SQLite and PostgreSQL:
the exact global budget under racing workers (two plain workers and a --processes 2 supervisor),
kill -9 and resume from a checkpoint, SIGTERM hand-back, and the dashboard server.
(`--gpus` on this GPU-less node is checked in-process in test_service.py.)

Every subprocess runs in its own session and is killed (with its children) at teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Tiny 16 px convolutions gain nothing from intra-op threads, and several torch processes with
# two spinning OpenMP threads each on a (shared) 2-core box slow each other down many times over.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Head-only trials train on cached backbone features, so an epoch is a fraction of a second
# (mostly its checkpoint): a dozen of them leave seconds to interrupt a trial after its first
# checkpoint and before its end. No early stopping. The warm start gives trial 0 lr = 1e-3
# (adamw is not offered, so the space's adam stays): every backend resumes the same trial.
RESUME_EPOCHS = 12
RESUME_SPACE = f"""\
description: Resume test space.
settings:
  model: resnet18
  image_size: 16
params:
  freeze: {{type: fixed, value: head}}
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  optimizer: {{type: fixed, value: adam}}
  batch_size: {{type: fixed, value: 128}}
  epochs: {{type: fixed, value: {RESUME_EPOCHS}}}
  patience: {{type: fixed, value: {RESUME_EPOCHS}}}
"""


def create(storage_url: str, name: str, space: Path, n_trials: int, artifacts: Path, *extra: str) -> None:
    result = CliRunner().invoke(cli, [
        "create", "--study", name, "--space", str(space), "--data", "digits", "--image-size", "16",
        "--weights", "none", "--n-trials", str(n_trials), "--storage", storage_url,
        "--artifacts", str(artifacts), *extra,
    ])
    assert result.exit_code == 0, result.output


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def load(storage_url: str, name: str) -> optuna.Study:
    # One storage (engine) per URL: polling must not build a new engine every 0.1 s.
    if storage_url not in _STORAGES:
        _STORAGES[storage_url] = optuna.storages.RDBStorage(storage_url)
    return optuna.load_study(study_name=name, storage=_STORAGES[storage_url])


class Procs:
    """Starts `python -m tuner ...` in a new session, logs to a file, kills leftovers at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.folder / f"proc{len(self.started)}.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tuner", *args], stdout=handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.folder, start_new_session=True,
                env={**os.environ, **ONE_THREAD, **(env or {})},
            )
        proc.log = log  # type: ignore[attr-defined]
        self.started.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name} (exit {p.poll()}) ---\n{log.read_text(errors='replace')[-4000:]}"
                         for p, log in self.started)

    def wait(self, proc: subprocess.Popen, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {proc.pid} still running after {timeout}s\n{self.logs()}") from None

    def kill_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is not None:
                continue  # exited and reaped (a supervisor waits for its children first)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the process and its children
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(tmp_path):
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, procs: Procs, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{procs.logs()}")


def finished_line(log: Path) -> tuple[int, int, int]:
    match = re.search(r"^finished (\d+)/(\d+) trials? \((\d+) run by this process\)$", log.read_text(), re.M)
    assert match, log.read_text()[-3000:]
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def assert_budget_exact(study: optuna.Study, budget: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == budget, [(t.number, t.state.name) for t in trials]
    assert [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []
    for trial in trials:
        if trial.state == TrialState.FAIL:
            # Ended before any training: marked, nothing reported, never counted.
            assert trial.user_attrs.get("over_budget") is True, (trial.number, trial.user_attrs)
            assert trial.intermediate_values == {}
            assert "epoch" not in trial.user_attrs
    return finished


# --- the global budget -----------------------------------------------------------------

POP_SCRIPT = """
import json, sys, time
from pathlib import Path
import optuna
from optuna.trial import TrialState
from tuner.service._storage import StorageSettings, open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=open_storage(StorageSettings(url=sys.argv[1]), heartbeat=False))
while not Path(sys.argv[2]).exists():  # start together
    time.sleep(0.01)
asked = []
while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
    asked.append(study.ask().number)
print(json.dumps(asked))
"""


def test_racing_processes_pop_each_queued_trial_once(storage_url, tmp_path):
    """Queued trials (the warm start, retries, hand-backs) go to exactly one worker. On SQLite
    Optuna's SELECT ... FOR UPDATE does nothing: without tuner's BEGIN IMMEDIATE, four processes
    popped about one queued trial in five twice, and two workers trained the same trial."""
    study = optuna.create_study(study_name="queue", storage=storage_url)
    for index in range(60):
        study.enqueue_trial({"queued": index})
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", POP_SCRIPT, storage_url, str(go)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1)
    go.touch()
    asked = [number for proc in procs for number in json.loads(proc.communicate(timeout=120)[0])]

    assert [proc.returncode for proc in procs] == [0, 0, 0, 0]
    # The queued trials are numbers 0-59; a process that found the queue empty made a new one.
    assert sorted(n for n in asked if n < 60) == list(range(60))


def test_racing_workers_finish_the_budget_exactly(storage_url, tiny_space, tmp_path, procs):
    """Four worker processes started together: two plain `tuner worker`s that join with nothing
    but the study name and the storage, and a `--processes 2` supervisor's two CPU children.
    Exactly the budget finishes, no trial is lost or finishes twice, and none starts past it.

    (One test for all of it, because each worker process costs seconds of imports on this box.)
    """
    budget = 8
    # A short heartbeat: a worker whose budget is taken polls at this interval while the others'
    # trials run; the grace period stays well above any heartbeat lag on a busy 2-core box.
    # shufflenet_v2_x0_5 (0.3 M parameters, resnet18 has 11 M): the same code paths, with epochs
    # and checkpoints many times cheaper, so the time goes to the race and not to training.
    create(storage_url, "race", tiny_space, budget, tmp_path / "artifacts", "--max-epochs", "2",
           "--model", "shufflenet_v2_x0_5", "--heartbeat-interval", "1", "--grace-period", "10")
    supervisor = procs.start("worker", "--study", "race", "--storage", storage_url, "--processes", "2",
                             "--device", "cpu")
    # Start the plain workers with the supervisor's children, so that all four join together.
    wait_for(lambda: "started proc1" in supervisor.log.read_text(), 120, "the supervisor's children", procs)
    plain = [procs.start("worker", "--study", "race", "--storage", storage_url) for _ in range(2)]
    assert [procs.wait(p, timeout=300) for p in (*plain, supervisor)] == [0, 0, 0], procs.logs()

    log = supervisor.log.read_text()
    children = dict(re.findall(r"^\[supervisor\] started (proc\d) \(pid (\d+)\)$", log, re.M))
    assert sorted(children) == ["proc0", "proc1"], log
    assert "exited with" not in log, log  # no child crashed or was restarted
    workers = {f"{socket.gethostname()}:{pid}:cpu" for pid in children.values()}
    workers |= {f"{socket.gethostname()}:{p.pid}:auto" for p in plain}

    finished = assert_budget_exact(load(storage_url, "race"), budget)
    assert {t.user_attrs["worker"] for t in finished} <= workers
    lineages = [t.user_attrs["lineage"] for t in finished]
    assert len(lineages) == len(set(lineages)), "a trial finished twice"
    for trial in finished:  # one report per epoch run, none missing
        assert sorted(trial.intermediate_values) == list(range(1, trial.user_attrs["epochs_run"] + 1)), trial.number
    summaries = [*(finished_line(p.log) for p in plain), *(
        tuple(int(g) for g in m) for m in re.findall(
            r"^finished (\d+)/(\d+) trials? \((\d+) run by this process\)$", log, re.M))]
    assert len(summaries) == 4 and {s[1] for s in summaries} == {budget}, summaries
    assert sum(s[2] for s in summaries) == budget, summaries  # every trial trained once, by one worker
    # The warm start ran first, with the space's own values for what it does not set.
    assert {k: finished[0].params[k] for k in ("freeze", "lr")} == {"freeze": "head", "lr": 1e-3}
    assert {k: finished[1].params[k] for k in ("freeze", "lr", "backbone_lr")} == {
        "freeze": "last_blocks", "lr": 1e-3, "backbone_lr": 1e-5}
    # A normal run shows no failure: a trial marked over budget (racing workers can still
    # start one) is counted apart, and the budget is counted before each next trial.
    status = CliRunner().invoke(cli, ["status", "--storage", storage_url]).output
    assert "fail " not in status.splitlines()[1], status


# --- interrupted trials resume from their checkpoint -------------------------------------

_BASELINES: dict[tuple, tuple[float, dict[int, float]]] = {}


def uninterrupted(params: dict, number: int) -> tuple[float, dict[int, float]]:
    """The same trial run straight through in-process: its value and per-epoch metrics."""
    key = (tuple(sorted(params.items())), number)
    if key not in _BASELINES:
        from tuner.training._data import load_data
        from tuner.training._data_config import DataConfig
        from tuner.search._objective import make_objective
        from tuner.training._settings import TrialSettings
        from tuner.space._space import parse_space

        curve: dict[int, float] = {}
        data = load_data(DataConfig("digits", 16, 0.2, 0))
        # As the study's config gives a worker (the feature cache under conftest's XDG_CACHE_HOME).
        settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", seed=0)
        objective = make_objective(parse_space(RESUME_SPACE, source="resume.yaml", name="resume"), data, settings,
                                   on_epoch=lambda trial, epoch, epochs, metric: curve.__setitem__(epoch, metric))
        # The seed derives from the study seed and the lineage: the original trial's number.
        # One thread, like the workers (ONE_THREAD), so that the arithmetic is the same.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            value = objective(optuna.trial.FixedTrial(params, number=number))
        finally:
            torch.set_num_threads(threads)
        _BASELINES[key] = (value, curve)
    return _BASELINES[key]


def checkpoint_epoch(trial: optuna.trial.FrozenTrial) -> int:
    match = re.search(r"-t\d+-e(\d{4})\.pt$", trial.user_attrs["checkpoint"])
    assert match, trial.user_attrs["checkpoint"]
    return int(match.group(1))


def running_after_epoch(storage_url: str, name: str) -> optuna.trial.FrozenTrial | None:
    for trial in load(storage_url, name).get_trials(states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("checkpoint") and trial.user_attrs.get("epoch", 0) >= 1:
            return trial
    return None


def assert_resumed(original: optuna.trial.FrozenTrial, retry: optuna.trial.FrozenTrial, epoch: int) -> None:
    assert retry.state == TrialState.COMPLETE
    assert retry.params == original.params
    assert retry.user_attrs["lineage"] == original.number
    assert retry.user_attrs["resumed_from_epoch"] == epoch >= 1
    assert sorted(retry.intermediate_values) == list(range(1, RESUME_EPOCHS + 1))
    # The epochs run before the interruption are part of the retry's learning curve.
    assert {s: retry.intermediate_values[s] for s in range(1, epoch + 1)} == {
        s: original.intermediate_values[s] for s in range(1, epoch + 1)}
    value, curve = uninterrupted(retry.params, original.number)
    assert retry.value == value
    assert retry.intermediate_values == curve


def test_kill_9_mid_trial_then_a_new_worker_retries_it_from_its_checkpoint(storage_url, tmp_path, procs):
    space = tmp_path / "resume.yaml"
    space.write_text(RESUME_SPACE)
    artifacts = tmp_path / "artifacts"
    create(storage_url, "kill", space, 1, artifacts, "--heartbeat-interval", "1", "--grace-period", "3")
    first = procs.start("worker", "--study", "kill", "--storage", storage_url)
    wait_for(lambda: running_after_epoch(storage_url, "kill"), 180, "epoch 1 to be checkpointed", procs, 0.05)
    os.kill(first.pid, signal.SIGKILL)
    assert procs.wait(first, timeout=30) == -signal.SIGKILL

    [stale] = load(storage_url, "kill").get_trials()
    assert stale.state == TrialState.RUNNING  # nobody has noticed yet
    epoch = checkpoint_epoch(stale)
    assert 1 <= epoch < RESUME_EPOCHS

    # Started at once: the new worker finds the trial stale (3 s grace) or waits until it is.
    second = procs.start("worker", "--study", "kill", "--storage", storage_url)
    uninterrupted(stale.params, stale.number)  # the baseline, meanwhile
    assert procs.wait(second, timeout=240) == 0, procs.logs()
    assert finished_line(second.log) == (1, 1, 1)
    original, retry = load(storage_url, "kill").get_trials()
    assert original.state == TrialState.FAIL
    assert retry.system_attrs["failed_trial"] == original.number
    assert_resumed(original, retry, epoch)
    assert not list(artifacts.glob("ckpt-*")), "a finished trial's checkpoints are removed"


def test_sigterm_hands_the_trial_back_at_once_and_another_worker_resumes_it(storage_url, tmp_path, procs):
    space = tmp_path / "resume.yaml"
    space.write_text(RESUME_SPACE)
    artifacts = tmp_path / "artifacts"
    # Default heartbeat (30 s / 120 s grace): a retry seen right away cannot come from the heartbeat.
    create(storage_url, "term", space, 1, artifacts)
    first = procs.start("worker", "--study", "term", "--storage", storage_url)
    seen = wait_for(lambda: running_after_epoch(storage_url, "term"), 180, "epoch 1 to finish", procs, 0.05)
    first.send_signal(signal.SIGTERM)
    assert procs.wait(first, timeout=60) == 130, procs.logs()
    assert finished_line(first.log) == (0, 1, 1)

    original, queued = load(storage_url, "term").get_trials()
    epoch = checkpoint_epoch(original)
    assert seen.user_attrs["epoch"] <= epoch < RESUME_EPOCHS
    assert original.state == TrialState.FAIL
    assert original.user_attrs["handed_back"] is True and original.user_attrs["stop_reason"] == "interrupted"
    # It stopped after finishing an epoch: that epoch is reported, checkpointed and recorded.
    assert sorted(original.intermediate_values) == list(range(1, epoch + 1))
    assert original.user_attrs["epoch"] == epoch and len(original.user_attrs["history"]) == epoch
    assert queued.state == TrialState.WAITING
    assert queued.user_attrs["checkpoint"] == original.user_attrs["checkpoint"]
    assert queued.user_attrs["lineage"] == original.number and "handed_back" not in queued.user_attrs
    assert (artifacts / original.user_attrs["checkpoint"]).is_file()
    assert f"trial {original.number} handed back at epoch {epoch}; another worker resumes it" in first.log.read_text()
    # Said at the signal, before the epoch ends: what happens next.
    assert (f"finishing epoch {epoch} of {RESUME_EPOCHS} of trial {original.number}, then handing it back; "
            "Ctrl-C again to quit now") in first.log.read_text()
    assert "Traceback" not in first.log.read_text() and "failed with" not in first.log.read_text()

    second = procs.start("worker", "--study", "term", "--storage", storage_url)
    assert procs.wait(second, timeout=240) == 0, procs.logs()
    assert finished_line(second.log) == (1, 1, 1)
    trials = load(storage_url, "term").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert_resumed(original, trials[1], epoch)
    assert f"trial 1 resumes trial {original.number} from epoch {epoch + 1}" in second.log.read_text()


# --- the dashboard ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dashboard_serves_the_studies_of_the_storage(postgres_url, tiny_space, tmp_path, procs):
    """On PostgreSQL only, the deployed setup (docker-compose.yml): what it reads of the storage
    is what `tuner status` reads, which runs on both backends in test_service.py."""
    create(postgres_url, "dash", tiny_space, 2, tmp_path / "artifacts")
    port = free_port()
    server = procs.start("dashboard", "--storage", postgres_url, "--port", str(port))

    def studies():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, procs.logs()
            return None

    listed = wait_for(studies, 120, "the dashboard to answer", procs, 0.25)
    assert [s["study_name"] for s in listed["study_summaries"]] == ["dash"]
    server.send_signal(signal.SIGTERM)
    procs.wait(server, timeout=30)
