"""Workers started one by one on a machine share its cores (tuner.service._cores), with real processes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tuner.cli import cli
from tuner.service._cores import CoreShare, default_folder, machine_cores
from tuner.service._torch_threads import TorchThreads

# A stand-in for another worker: it holds the lock on its pid file in `folder`, as a worker does.
HOLDER = ("import fcntl, os, sys, time; f = open(os.path.join(sys.argv[1], str(os.getpid())), 'a'); "
          "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")


@pytest.fixture
def sleepers():
    """Live processes standing in for other workers of this machine (given a folder: holding
    their pid file's lock there); killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(folder: Path | None = None) -> subprocess.Popen:
        if folder is None:
            started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        else:
            started.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                                            text=True))
            assert started[-1].stdout.readline() == "held\n"
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)


def test_the_live_workers_are_counted_and_a_dead_ones_file_is_removed(tmp_path, sleepers):
    share = CoreShare(tmp_path, cores=8)
    assert share.join()
    others = [sleepers(tmp_path), sleepers(tmp_path)]
    (tmp_path / "notes.txt").touch()  # not a pid file: ignored
    assert share.workers() == 3

    others[0].kill()
    others[0].wait(timeout=30)
    assert share.workers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getpid()), str(others[1].pid), "notes.txt"])
    share.leave()
    assert share.workers() == 1  # this worker alone (it has left: never counted as zero)


def test_a_dead_workers_file_is_not_counted_though_its_pid_was_reused(tmp_path, sleepers):
    """A killed worker's pid now names an unrelated live process, which holds no lock."""
    share = CoreShare(tmp_path, cores=8)
    assert share.join()
    unrelated = sleepers()
    (tmp_path / str(unrelated.pid)).touch()
    assert share.workers() == 1
    assert [p.name for p in tmp_path.iterdir()] == [str(os.getpid())]
    share.leave()


def test_the_default_folder_is_named_by_uid_even_without_a_user_name(monkeypatch):
    """A container's runAsUser uid without a passwd entry, and no LOGNAME/USER: no KeyError."""
    import pwd

    for name in ("TUNER_WORKERS_DIR", "LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert default_folder() == Path(tempfile.gettempdir()) / f"tuner-workers-{os.getuid()}"


def test_an_unwritable_workers_folder_means_no_core_sharing_with_a_warning(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "workers"  # under a file: no one can create it, root included
    with caplog.at_level(logging.WARNING, logger="tuner.service._cores"):
        assert CoreShare(folder, cores=8).join() is False
    assert f"cores not shared with other tuner workers: cannot write {folder}" in caplog.text


@pytest.mark.parametrize("start", ["every core", "already its share"])
def test_a_worker_in_this_process_logs_its_share_and_gives_torch_its_thread_count_back(
        tmp_path, tiny_space, sleepers, monkeypatch, start):
    """The share is logged even where torch already runs that many threads, and CliRunner
    workers share the pytest process: the lowered count must not stick after the worker."""
    cores = machine_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    folder = tmp_path / "workers"
    folder.mkdir()
    sleepers(folder)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("TUNER_WORKERS_DIR", str(folder))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    runner = CliRunner()
    created = runner.invoke(cli, [
        "create", "--study", "s", "--storage", url, "--space", str(tiny_space), "--data", "digits",
        "--image-size", "16", "--weights", "none", "--n-trials", "1", "--max-epochs", "1", "--no-warm-start",
        "--artifacts", str(tmp_path / "artifacts")])
    assert created.exit_code == 0, created.output
    threads = cores if start == "every core" else cores // 2
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = runner.invoke(cli, ["worker", "--study", "s", "--storage", url, "--device", "cpu"])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert f"{cores // 2} torch thread(s): {cores} cores shared by 2 tuner workers" in result.output
    assert after == threads


def test_a_worker_started_beside_another_takes_its_share_of_the_cores_and_leaves_the_count(
        tmp_path, tiny_space, sleepers, monkeypatch):
    """A real `tuner worker` process, OMP_NUM_THREADS unset, with one other live worker."""
    cores = machine_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    folder = tmp_path / "workers"
    folder.mkdir()
    other = sleepers(folder)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    created = CliRunner().invoke(cli, [
        "create", "--study", "s", "--storage", url, "--space", str(tiny_space), "--data", "digits",
        "--image-size", "16", "--weights", "none", "--n-trials", "1", "--max-epochs", "1", "--no-warm-start",
        "--artifacts", str(tmp_path / "artifacts")])
    assert created.exit_code == 0, created.output
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "worker", "--study", "s", "--storage", url, "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**env, "TUNER_WORKERS_DIR": str(folder)})

    assert result.returncode == 0, result.stderr
    expected = f"{cores // 2} torch thread(s): {cores} cores shared by 2 tuner workers on this machine"
    assert re.search(re.escape(expected), result.stderr), result.stderr
    assert [p.name for p in folder.iterdir()] == [str(other.pid)]  # its own file went with it


def test_worker_help_says_how_the_cores_are_shared():
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0
    assert "OMP_NUM_THREADS" in result.output and "TUNER_WORKERS_DIR" in result.output


class FakeClock:
    """time.monotonic for a test: it moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_thread_line_follows_each_change_but_is_logged_at_most_once_a_minute(tmp_path, sleepers, monkeypatch,
                                                                                 caplog):
    """It was printed four times in 30 s as another tuner process came and went."""
    cores = machine_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("TUNER_WORKERS_DIR", str(tmp_path))
    clock, before = FakeClock(), torch.get_num_threads()
    torch.set_num_threads(cores)  # every core, as a worker starts (the tests run on one thread)
    threads = TorchThreads(logging.LoggerAdapter(logging.getLogger("test_threads"), {}), clock=clock)
    threads.join()
    lines = []

    def at(seconds: float, workers: int) -> None:
        """A trial or epoch starts `seconds` after the first, with `workers` live workers."""
        clock.now = 1000.0 + seconds
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="test_threads"):
            threads.share()
        assert torch.get_num_threads() == cores // workers  # the count itself follows at once
        lines.extend((seconds, r.getMessage().split(":")[0]) for r in caplog.records)

    try:
        at(0, 1)
        other = sleepers(tmp_path)
        at(10, 2)                    # changed, but logged 10 s ago
        other.kill()
        other.wait(timeout=30)
        at(20, 1)                    # back to what was logged: nothing to say
        other = sleepers(tmp_path)
        at(30, 2)
        at(59.9, 2)                  # still within the minute
        at(60, 2)                    # the minute is over: the change that held is logged now
        other.kill()
        other.wait(timeout=30)
        at(70, 1)
        at(119, 1)
        at(120, 1)
        at(500, 1)                   # no change since: nothing
    finally:
        threads.leave()
        torch.set_num_threads(before)
    assert lines == [(0, f"{cores} torch thread(s)"), (60, f"{cores // 2} torch thread(s)"),
                     (120, f"{cores} torch thread(s)")]
