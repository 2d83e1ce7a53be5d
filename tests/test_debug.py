"""`tuner --debug` and TUNER_DEBUG=1: the traceback behind an `Error:` line, for every command."""

from __future__ import annotations

import sys
import uuid

import pytest
from click.testing import CliRunner

from tuner.cli import cli

# A user's model whose builder fails deep inside their own code.
FAILING_MODEL = '''\
def helper():
    raise ValueError("the user's bug, deep inside")


def build(pretrained):
    return helper()
'''


@pytest.fixture
def failing_model(tmp_path, monkeypatch):
    """The MODULE:FUNCTION name of FAILING_MODEL, importable from the working directory."""
    name = f"failing_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FAILING_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # tuner puts the working directory on it
    yield f"{name}:build"
    sys.modules.pop(name, None)


DEBUG_WAYS = [
    pytest.param([], {}, False, id="neither"),
    pytest.param(["--debug"], {}, True, id="--debug"),
    pytest.param([], {"TUNER_DEBUG": "1"}, True, id="TUNER_DEBUG=1"),
    pytest.param([], {"TUNER_DEBUG": "0"}, False, id="TUNER_DEBUG=0"),
]


@pytest.mark.parametrize("flags, env, shown", DEBUG_WAYS)
def test_a_failing_user_model_s_traceback_is_shown_on_request(tmp_path, failing_model, flags, env, shown):
    """It was one line, and the traceback into the user's code could never be seen."""
    args = [*flags, "run", "--data", "digits", "--model", failing_model, "--weights", "none", "--image-size", "16",
            "--n-trials", "1", "--device", "cpu", "--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    result = CliRunner().invoke(cli, args, env={"TUNER_DEBUG": None, **env})
    error = f"Error: {failing_model}(pretrained=False) failed (ValueError: the user's bug, deep inside)\n"
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.endswith(error)
    if not shown:
        assert result.stderr == error
        return
    trace = result.stderr[:-len(error)]
    assert trace.startswith("Traceback (most recent call last):\n"), trace
    assert 'in helper\n    raise ValueError("the user\'s bug, deep inside")' in trace
    assert "ValueError: the user's bug, deep inside\n" in trace
    assert "The above exception was the direct cause of the following exception:" in trace
    assert trace.rstrip().splitlines()[-1] == "tuner.errors.ModelError: " + error[len("Error: "):].rstrip()
    assert not (tmp_path / "study.db").exists()


def test_every_command_s_error_shows_its_traceback_with_debug_even_a_hidden_cause(tmp_path):
    """A storage that cannot be opened: raised `from None`, its driver's error is shown too."""
    folder = tmp_path / "not-a-db"
    folder.mkdir()
    (folder / "study.db").mkdir()  # a folder where the database file should be
    args = ["best", "--storage", f"sqlite:///{folder / 'study.db'}"]
    plain = CliRunner().invoke(cli, args, env={"TUNER_DEBUG": None})
    debug = CliRunner().invoke(cli, ["--debug", *args], env={"TUNER_DEBUG": None})
    assert plain.exit_code == debug.exit_code == 1
    assert plain.stderr.startswith("Error: cannot open storage") and plain.stderr.count("\n") == 1
    assert debug.stderr.endswith(plain.stderr)
    assert "sqlite3.OperationalError" in debug.stderr  # the cause the one line hides
    assert "tuner.errors.StorageError: cannot open storage" in debug.stderr


def test_help_says_how_to_see_a_traceback():
    text = CliRunner().invoke(cli, ["--help"]).output
    assert "--debug" in text and "TUNER_DEBUG=1" in text
