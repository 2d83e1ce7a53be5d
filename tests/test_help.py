"""Help and messages: every command's --help has examples, every option a description and a metavar
that shows its form; click checks ranges and names the flag as typed; one clean line for skipped files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tuner.cli import cli

# What click shows for an option that says nothing about its form (FILE and DIRECTORY do say it).
GENERIC = {"TEXT", "INTEGER", "FLOAT", "PATH", "BOOLEAN", "INTEGER RANGE", "FLOAT RANGE"}


def commands(group: click.Group, path: tuple[str, ...] = ()):
    yield path, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = list(commands(cli))


@pytest.mark.parametrize("path, command", ALL, ids=[" ".join(p) or "tuner" for p, _ in ALL])
def test_help_has_examples_and_every_option_says_what_it_takes(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "\nExamples:\n" in result.output or "\n  Examples:\n" in result.output, result.output
    context = click.Context(command, info_name=path[-1] if path else "tuner")
    for param in command.params:
        if isinstance(param, click.Option) and param.name == "help" or getattr(param, "hidden", False):
            continue
        if isinstance(param, click.Option):
            assert param.help, f"tuner {' '.join(path)} {param.opts[0]} has no description"
            if param.is_flag or param.count:
                continue
        shown = param.make_metavar(context)
        assert shown.split("...")[0].strip() not in GENERIC, f"tuner {' '.join(path)} {param.name} shows {shown}"


@pytest.mark.parametrize("args, message", [
    (["run", "--n-trials", "-1"], "Invalid value for '--n-trials': -1 is not in the range x>=1."),
    (["create", "--study", "s", "--n-trials", "0"], "Invalid value for '--n-trials': 0 is not in the range x>=1."),
    (["run", "--val-fraction", "1.5"], "Invalid value for '--val-fraction': 1.5 is not in the range 0<x<1."),
    (["run", "--max-epochs", "0"], "Invalid value for '--max-epochs': 0 is not in the range x>=1."),
    (["predict", "--model", "m", "x.png", "--top-k", "0"], "Invalid value for '--top-k': 0 is not in the range x>=1."),
    (["retrain", "--study", "s", "--out", "o", "--epochs", "0"],
     "Invalid value for '--epochs': 0 is not in the range x>=1."),
])
def test_click_checks_ranges_and_names_the_flag_as_typed(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"Error: {message}"


def test_models_says_when_nothing_matched():
    result = CliRunner().invoke(cli, ["models", "zzz"])
    assert (result.exit_code, result.stdout) == (0, "no model name contains 'zzz'\n")


def test_skipped_files_are_one_clean_warning_line_on_the_terminal(tmp_path, image_folder, tiny_space):
    """It used to be a Python warning: file, line number and the source line `warnings.warn(...)`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "create", "--study", "w", "--space", str(tiny_space), "--data",
         str(image_folder), "--weights", "none", "--image-size", "16", "--storage",
         f"sqlite:///{tmp_path / 's.db'}"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"Warning: skipped 1 unreadable file in {image_folder}: dark/corrupt.png\n"
