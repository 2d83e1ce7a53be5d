"""Workers started one by one on a machine share its cores (tuner.cores), with real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tuner.cli import cli
from tuner.cores import CoreShare, machine_cores


@pytest.fixture
def sleepers():
    """Live processes standing in for other workers of this machine; killed at teardown."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)


def test_the_live_workers_are_counted_and_a_dead_ones_file_is_removed(tmp_path, sleepers):
    share = CoreShare(tmp_path, cores=8)
    share.join()
    others = [sleepers(), sleepers()]
    for proc in others:
        (tmp_path / str(proc.pid)).touch()
    (tmp_path / "notes.txt").touch()  # not a pid file: ignored
    assert share.workers() == 3

    others[0].kill()
    others[0].wait(timeout=30)
    assert share.workers() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getpid()), str(others[1].pid), "notes.txt"])
    share.leave()
    assert share.workers() == 1  # this worker alone (it has left: never counted as zero)


def test_a_worker_started_beside_another_takes_its_share_of_the_cores_and_leaves_the_count(
        tmp_path, tiny_space, sleepers, monkeypatch):
    """A real `tuner worker` process, OMP_NUM_THREADS unset, with one other live worker."""
    cores = machine_cores()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    folder = tmp_path / "workers"
    folder.mkdir()
    other = sleepers()
    (folder / str(other.pid)).touch()
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
