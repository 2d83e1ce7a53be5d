"""Read-only commands on a SQLite study that this user may not write (a read-only folder and file)."""

from __future__ import annotations

import ctypes
import gc
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_service import add_finished_trial, library_study

from tuner.cli import cli

READ_COMMANDS = [["status"], ["studies"], ["best"], ["export", "--format", "json"]]
ROOT = Path(__file__).resolve().parents[1]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def obey_permission_bits() -> None:
    """In the child before it runs tuner: drop root's power to ignore permission bits (as any
    other user meets them), which stays with uid 0 as its files' owner. (The user nobody cannot
    even start this Python: it lives under /root, which only root may read.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def tuner_obeying_permissions(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, env=env,
                          preexec_fn=obey_permission_bits, timeout=120)


def study_with_one_trial(url: str, tiny_space: Path) -> None:
    """The study "mine" with one finished trial, its storage closed again (no -wal, -shm left)."""
    study = library_study(url, "mine", tiny_space, n_trials=3, warm_start=False)
    add_finished_trial(study, 0.75)
    del study
    gc.collect()  # the storage's connection pool closes with it


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def make_read_only(folder: Path) -> None:
    for path in folder.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(0o555)


@pytest.fixture
def read_only_study(tmp_path, tiny_space):
    """The storage URL of a study in a folder, both read-only; writable again after the test."""
    folder = tmp_path / "studies"
    folder.mkdir()
    url = f"sqlite:///{folder / 'study.db'}"
    study_with_one_trial(url, tiny_space)
    assert [p.name for p in folder.iterdir()] == ["study.db"]  # no writer has it open
    try:
        probe = tuner_obeying_permissions(["--version"])
    except OSError as exc:
        pytest.skip(f"cannot drop root's permission override here: {exc}")
    assert probe.returncode == 0, probe.stderr
    make_read_only(folder)
    yield url, folder
    folder.chmod(0o755)


def test_read_commands_open_a_study_in_a_read_only_folder_and_change_nothing(read_only_study):
    """They failed with "unable to open database file": SQLite in WAL mode writes beside the file."""
    url, folder = read_only_study
    before = snapshot(folder)
    shown = {}
    for command in READ_COMMANDS:
        result = tuner_obeying_permissions([*command, "--storage", url])
        assert result.returncode == 0, (command, result.stderr)
        assert "mine" in result.stdout and result.stderr == "", (command, result.stdout, result.stderr)
        assert snapshot(folder) == before, command
        shown[command[0]] = result.stdout
    assert "study mine: 1/3 finished [complete 1]; best val_accuracy 0.7500 (trial 0)" in shown["status"]
    assert "study mine: best val_accuracy = 0.7500 (trial 0)" in shown["best"]


def test_a_command_that_writes_still_says_it_cannot(read_only_study):
    url, _ = read_only_study
    result = tuner_obeying_permissions(["extend", "--n-trials", "5", "--storage", url])
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot open storage {url}: "), result.stderr


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_read_commands_leave_a_writable_database_file_as_it_was(tmp_path, tiny_space, command):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_with_one_trial(url, tiny_space)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [*command, "--storage", url])
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path)["study.db"] == before["study.db"]
