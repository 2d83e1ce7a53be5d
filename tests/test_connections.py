"""Every command closes the database connections it opened, also when it fails.

A process that runs commands one after another (a notebook, a script driving the CLI in-process,
this test suite) otherwise keeps each command's pooled connections until the garbage collector
reaches the engine: Optuna 5's RDBStorage has no __del__. PostgreSQL refuses clients past
max_connections (100 by default), and a CI run failed on exactly that: "too many clients already".
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from conftest import TINY_SPACE, open_connections, opened_storage
from tuner.cli import cli
from tuner.service._lifecycle import list_studies
from tuner.service._results import study_status

HEAD_ONLY = re.sub(r"  backbone_lr:\n(    .*\n)+", "", TINY_SPACE).replace(
    "choices: [head, last_blocks]", "choices: [head]")


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return f"exit {result.exit_code}: {result.output}"


@pytest.fixture
def study(postgres_url, tmp_path) -> tuple[str, Path]:
    """A finished 2-trial head-only study in a fresh PostgreSQL database."""
    space = tmp_path / "head.yaml"
    space.write_text(HEAD_ONLY)
    ran = invoke(["run", "--study", "s", "--space", str(space), "--data", "digits", "--image-size", "16",
                  "--weights", "none", "--max-epochs", "1", "--n-trials", "2", "--storage", postgres_url,
                  "--artifacts", str(tmp_path / "artifacts"), "--device", "cpu", "--quiet"])
    assert ran.startswith("exit 0"), ran
    return postgres_url, tmp_path


def test_run_leaves_no_connection_open(study):
    url, _ = study
    assert open_connections(url) == 0


def test_each_command_closes_its_connections_when_it_ends(study):
    url, tmp_path = study
    params = tmp_path / "params.yaml"
    params.write_text("freeze: head\nlr: 0.002\n")
    commands = {
        "status": ["status"],
        "studies": ["studies"],
        "best": ["best"],
        "best yaml": ["best", "--format", "yaml"],
        "export": ["export", "--format", "json"],
        "report": ["report", "--out", str(tmp_path / "report")],
        "extend": ["extend", "--n-trials", "4"],
        "enqueue": ["enqueue", "--params", str(params)],
        "worker": ["worker", "--device", "cpu", "--quiet"],
        "stop": ["stop"],
        "retrain": ["retrain", "--out", str(tmp_path / "model"), "--epochs", "1", "--device", "cpu", "--quiet"],
        "run again (continues)": ["run", "--study", "s", "--device", "cpu", "--quiet"],
        "create (refused: exists)": ["create", "--study", "s", "--space", str(tmp_path / "head.yaml"),
                                     "--data", "digits"],
        "best (unknown study)": ["best", "--study", "nope"],
        "delete": ["delete", "--yes"],
    }
    left = {}
    for name, args in commands.items():
        study_args = [] if "--study" in args or name == "studies" else ["--study", "s"]
        output = invoke([*args, *study_args, "--storage", url])
        assert output.startswith("exit 0") or "(refused" in name or "(unknown" in name, (name, output)
        left[name] = open_connections(url)
    assert left == dict.fromkeys(commands, 0)


@pytest.mark.parametrize("read", [study_status, list_studies], ids=["study_status", "list_studies"])
def test_the_library_reads_close_their_connections(postgres_url, read):
    with opened_storage(postgres_url) as storage:
        optuna.create_study(study_name="foreign", storage=storage)
    args = (postgres_url, None) if read is study_status else (postgres_url,)
    assert read(*args)["studies"][0]["name"] == "foreign"
    assert open_connections(postgres_url) == 0
