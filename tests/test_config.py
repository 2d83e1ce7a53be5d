"""One config module: every default written once (the CLI reads it from the dataclass fields),
a `tuner run` opens one storage, parses and checks its space and resolves its device once,
and tuner.config imports no torch and no Optuna."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import sqlalchemy
from click.testing import CliRunner

import tuner.space._space
from tuner.cli import cli
from tuner.cli._options import RENAMED
from tuner.config import (PRUNERS, SAMPLERS, SPACE_SETTINGS, STORED_OPTIONS, MachineOptions, StudyConfig,
                          StudyRequest, default, requested_settings)
from tuner.service._open import open_for_work
from tuner.service._storage import StorageSettings
from tuner.training._settings import TrialSettings

pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data_sources.DataWarning")

ROOT = Path(__file__).resolve().parents[1]
HOLDERS = (StudyConfig, MachineOptions, StudyRequest)


def field_of(name: str) -> str | None:
    """The settings field a click parameter sets, if any."""
    name = RENAMED.get(name, name)
    return name if any(name in holder.__dataclass_fields__ for holder in HOLDERS) else None


def commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


# (command, parameter) for every optional option that sets a setting
OPTIONS = [
    pytest.param(command, param, id=f"{name} --{param.name}")
    for name, command in commands(cli) for param in command.params
    if isinstance(param, click.Option) and not param.required and field_of(param.name) is not None
]


@pytest.mark.parametrize("command, param", OPTIONS)
def test_each_option_default_is_the_settings_field_default(command, param):
    """What the command gets when the option is left out is the field's default."""
    name = field_of(param.name)
    value = command.make_context(command.name, [], resilient_parsing=True).params[param.name]
    if value is None and name in SPACE_SETTINGS + ("compile",):
        return  # from the space file, or (retrain --compile) as the best trial ran
    assert value == default(name), f"--{param.name}: {value!r} != {default(name)!r}"


def test_every_stored_option_of_run_is_checked_against_its_field():
    checked = {RENAMED.get(p.name, p.name) for p in cli.commands["run"].params if isinstance(p, click.Option)}
    assert set(STORED_OPTIONS) <= checked
    assert {f.name for f in dataclasses.fields(MachineOptions)} <= checked


@pytest.mark.parametrize("option, choices", [("sampler", SAMPLERS), ("pruner", PRUNERS)])
def test_the_choices_are_the_config_modules(option, choices):
    (param,) = [p for p in cli.commands["run"].params if p.name == option]
    assert tuple(param.type.choices) == choices


@pytest.mark.parametrize("holder, names", [
    (StorageSettings, ("heartbeat_interval", "grace_period", "max_retry")),
    (TrialSettings, ("weights", "image_size", "device", "seed", "max_epochs", "num_workers", "cache_views",
                     "cache_dir", "compile")),
])
def test_derived_settings_take_their_defaults_from_the_config(holder, names):
    fields = holder.__dataclass_fields__
    assert {name: fields[name].default for name in names} == {name: default(name) for name in names}


def test_config_imports_neither_torch_nor_optuna():
    code = "import sys, tuner.config; print(sorted({'torch', 'optuna'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def wrap_everywhere(monkeypatch, real, counts: dict, key: str) -> None:
    """`real` wrapped to count its calls in every loaded tuner module that looks it up by
    name (the real function still runs)."""

    def wrapper(*args, **kwargs):
        counts[key] += 1
        return real(*args, **kwargs)

    holders = [module for name, module in sorted(sys.modules.items())
               if (name == "tuner" or name.startswith("tuner.")) and getattr(module, real.__name__, None) is real]
    assert holders, f"no tuner module looks up {real.__name__}"
    for module in holders:
        monkeypatch.setattr(module, real.__name__, wrapper)


@pytest.fixture
def counted(monkeypatch):
    """How often the space text is parsed, the space checked, the device resolved, and how
    many database engines connect, the real functions running: each wrapped where tuner
    looks it up, a pool event for engines."""
    counts = {"parsed": 0, "space_checks": 0, "devices": 0, "engines": 0}
    # The modules a run looks them up in, loaded now so that their names are wrapped too.
    importlib.import_module("tuner.service._prepare")
    importlib.import_module("tuner.search._objective")
    wrap_everywhere(monkeypatch, tuner.space._space.parse_space, counts, "parsed")
    wrap_everywhere(monkeypatch, tuner.training._hyperparams.check_space, counts, "space_checks")
    wrap_everywhere(monkeypatch, tuner.training._loop.resolve_device, counts, "devices")

    def first_connect(dbapi_connection, record) -> None:
        counts["engines"] += 1

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "first_connect", first_connect)
    yield counts
    sqlalchemy.event.remove(sqlalchemy.pool.Pool, "first_connect", first_connect)


def run(url: str, *extra: str) -> None:
    result = CliRunner().invoke(cli, ["run", "--study", "s", "--storage", url, "--device", "cpu", "--quiet", *extra])
    assert result.exit_code == 0, result.output


def test_a_run_opens_one_storage_and_parses_and_checks_its_space_and_device_once(tmp_path, tiny_space, counted):
    once = {"parsed": 1, "space_checks": 1, "devices": 1, "engines": 1}
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run(url, "--space", str(tiny_space), "--data", "digits", "--weights", "none", "--image-size", "16",
        "--n-trials", "1", "--max-epochs", "1", "--artifacts", str(tmp_path / "art"))
    assert counted == once, "a run that creates the study"
    assert CliRunner().invoke(cli, ["extend", "--study", "s", "--storage", url, "--n-trials", "2"]).exit_code == 0
    counted.update(dict.fromkeys(counted, 0))
    run(url)
    assert counted == once, "a run that continues it"


def test_a_joined_study_runs_with_its_stored_heartbeat_in_the_one_storage(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    created = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--space", str(tiny_space),
                                       "--data", "digits", "--weights", "none", "--image-size", "16",
                                       "--heartbeat-interval", "7", "--grace-period", "50", "--max-retry", "1"])
    assert created.exit_code == 0, created.output
    opened = open_for_work(StorageSettings(url=url), "s", MachineOptions(device="cpu"))
    storage = opened.storage
    assert (storage.get_heartbeat_interval(), storage.grace_period, storage.failed_trial_callback.max_retry) == (7, 50, 1)
    assert (opened.settings.heartbeat_interval, opened.settings.grace_period, opened.settings.max_retry) == (7, 50, 1)


def test_new_config_takes_the_flags_over_the_space_file_over_the_defaults():
    request = StudyRequest(given={"model": "mobilenet_v3_small", "n_trials": 3, "space": "x.yaml"})
    values = requested_settings(request, {"model": "resnet50", "image_size": 64, "description": "ignored"})
    assert (values["model"], values["image_size"], values["n_trials"], values["seed"]) == (
        "mobilenet_v3_small", 64, 3, default("seed"))
    assert "space" not in values and "description" not in values
