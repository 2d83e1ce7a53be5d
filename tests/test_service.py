"""The study service in-process: `tuner create/run/status/best/export/report/retrain/worker`
through click's CliRunner and the library, on real Optuna studies in SQLite and PostgreSQL.

Subprocess workers (budget races, kill -9, SIGTERM, --processes, the dashboard server) are
in test_workers.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
import sqlalchemy
import torch
import torchvision
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from PIL import Image
from sqlalchemy.engine import make_url

from conftest import TINY_SPACE, _admin_engine, postgres_admin_url, unpooled_storage
from tuner.cli import cli
from tuner.errors import StorageError
from tuner.service._results import all_params
from tuner.space._space import load_space
from tuner.service._storage import StorageSettings, mask_url, open_storage
from tuner.config import StudyConfig
from tuner.service._open import create_study
from tuner.service._trial_stops import HandBack, OverBudget, TakenOver
from tuner.service._worker_log import ExpectedStops
from tuner.text import significant

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEAD = {"freeze": "head", "lr": 1e-3}
LAST_BLOCK = {"freeze": "last_blocks", "lr": 1e-3, "backbone_lr": 1e-5}


def fast_args(space: Path) -> list[str]:
    """The study options every test uses: digits at 16 px, random init, at most 2 epochs."""
    return ["--space", str(space), "--data", "digits", "--image-size", "16", "--weights", "none",
            "--max-epochs", "2"]


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def load(url: str, name: str) -> optuna.Study:
    # Unpooled: the module's shared PostgreSQL study is loaded by test after test, and each
    # pooled engine kept a connection open until the garbage collector found it.
    return optuna.load_study(study_name=name, storage=unpooled_storage(url))


def library_study(url: str, name: str, space_ref: str | Path, *, n_trials: int = 2, warm_start: bool = True,
                  artifacts: str = "") -> optuna.Study:
    """A tuner study created through the library (no data loaded): for tests that train nothing."""
    space = load_space(str(space_ref))
    config = StudyConfig(space_name=space.name, space_text=space.text, data="digits", model="resnet18",
                         weights="none", image_size=16, n_trials=n_trials, max_epochs=2, artifacts=artifacts,
                         warm_start=warm_start)
    storage = open_storage(StorageSettings(url=url), heartbeat=False)
    return create_study(storage, name, config, note=f"# {space.name} on digits")


def add_finished_trial(study: optuna.Study, value: float, **user_attrs) -> None:
    """A COMPLETE trial of the tiny space (lr 5e-3), as if a worker had trained it."""
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 5e-3}, distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)},
        value=value, user_attrs=user_attrs))


# --- tuner create ----------------------------------------------------------------------

CREATE_CASES = [
    pytest.param([], True, [HEAD, LAST_BLOCK], id="warm-start"),
    pytest.param(["--no-warm-start"], False, [], id="no-warm-start"),
]


@pytest.mark.parametrize("extra, warm_start, enqueued", CREATE_CASES)
def test_create_stores_the_whole_config_the_note_and_the_warm_start(storage_url, tiny_space, tmp_path,
                                                                    extra, warm_start, enqueued):
    artifacts = tmp_path / "shared-artifacts"
    result = invoke([
        "create", "--study", "s1", *fast_args(tiny_space), "--n-trials", "3", "--storage", storage_url,
        "--artifacts", str(artifacts), "--sampler", "random", "--pruner", "median", "--seed", "7",
        "--heartbeat-interval", "1", "--grace-period", "3", "--max-retry", "2", "--cache-views", "2",
        "--prior-weight", "4", "--startup-trials", "5", "--min-resource", "2", "--reduction-factor", "4", *extra,
    ])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"created study s1 in {mask_url(storage_url)}: tiny space, resnet18, 3 trials, metric val_accuracy",
        f"start workers with: tuner worker --study s1 --storage {shlex.quote(storage_url)}",
    ]
    study = load(storage_url, "s1")
    stored = dict(study.user_attrs["tuner_config"])
    fingerprint = stored.pop("data_fingerprint")
    assert fingerprint["classes"] == [str(i) for i in range(10)] and fingerprint["content"] == "digits"
    assert sum(fingerprint["train_counts"].values()) + sum(fingerprint["val_counts"].values()) == 1797
    assert stored == {
        "space_name": "tiny", "space_text": TINY_SPACE, "data": "digits", "model": "resnet18",
        "weights": "none", "image_size": 16, "val_fraction": 0.2, "sampler": "random", "pruner": "median",
        "n_trials": 3, "seed": 7, "max_epochs": 2, "metric": "val_accuracy", "direction": "maximize",
        "heartbeat_interval": 1, "grace_period": 3, "max_retry": 2, "artifacts": str(artifacts.resolve()),
        "warm_start": warm_start, "recipes": "sampled", "cache_views": 2, "prior_weight": 4.0, "startup_trials": 5,
        "min_resource": 2, "reduction_factor": 4, "rung_signal": "last", "rung_margin": 0, "head_trials": 0, "freeze_thaw": False,
    }
    assert study.metric_names == ["val_accuracy"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    note = optuna_dashboard.get_note(study)
    assert note.startswith("# tiny: resnet18 on digits\n")
    assert "Tiny test space." in note
    assert "* **Data:** digits (scikit-learn 8x8 handwritten digits)" in note
    assert "| `backbone_lr` | float | 1e-05 .. 0.0001 (log) | freeze = 'last_blocks' | - |" in note
    assert "* **Priors:** none in this space\n" in note
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * len(enqueued)
    assert [t.system_attrs["fixed_params"] for t in trials] == enqueued
    assert all(t.user_attrs == {"warm_start": True} for t in trials)


def test_create_stores_a_relative_artifact_folder_absolute(storage_url, tiny_space, tmp_path, monkeypatch):
    """Workers start in other folders: a relative path would find no checkpoint to resume."""
    monkeypatch.chdir(tmp_path)
    result = invoke(["create", "--study", "a", *fast_args(tiny_space), "--n-trials", "1", "--storage", storage_url,
                     "--artifacts", "rel-art"])
    assert result.exit_code == 0, result.output
    assert load(storage_url, "a").user_attrs["tuner_config"]["artifacts"] == str((tmp_path / "rel-art").resolve())


def test_create_beside_a_relative_sqlite_file_stores_the_default_artifact_folder_absolute(
        tiny_space, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["create", "--study", "a", *fast_args(tiny_space), "--n-trials", "1", "--storage",
                     "sqlite:///rel.db"])
    assert result.exit_code == 0, result.output
    stored = load(f"sqlite:///{tmp_path / 'rel.db'}", "a").user_attrs["tuner_config"]["artifacts"]
    assert stored == str((tmp_path / "rel-artifacts").resolve())


WARM_START_CASES = [
    # space, budget, enqueued params: only what the space can express, and never more than the budget
    pytest.param("tiny", 3, [HEAD, LAST_BLOCK], id="tiny: adamw and unfreeze_blocks left to the space"),
    pytest.param("tiny", 1, [HEAD], id="tiny: cut to the budget"),
    pytest.param("default", 20, [
        {"freeze": "head", "lr": 1e-3, "optimizer": "adamw"},
        {"freeze": "last_blocks", "unfreeze_blocks": 1, "head_init": "probe", "lr": 1e-3, "backbone_lr": 1e-5},
        {"freeze": "full", "head_init": "probe", "lr": 1e-5, "backbone_lr": 1e-5},
    ], id="default: all three, fine-tuning ones probed"),
    pytest.param("fine_tuning", 20, [
        {"freeze": "last_blocks", "unfreeze_blocks": 1, "head_init": "probe", "lr": 1e-3, "backbone_lr": 1e-5},
        {"freeze": "full", "head_init": "probe", "lr": 1e-5, "backbone_lr": 1e-5},
    ], id="fine_tuning: no head-only, both probed"),
    pytest.param("feature_extraction", 20, [{"lr": 1e-3, "optimizer": "adamw"}], id="feature_extraction: fixed head"),
]


@pytest.mark.parametrize("space_name, budget, enqueued", WARM_START_CASES)
def test_warm_start_enqueues_what_the_space_can_express(storage_url, tiny_space, space_name, budget, enqueued):
    ref = tiny_space if space_name == "tiny" else space_name
    study = library_study(storage_url, "ws", ref, n_trials=budget)
    trials = study.get_trials()
    assert [t.system_attrs["fixed_params"] for t in trials] == enqueued
    assert {t.state for t in trials} <= {TrialState.WAITING}
    space = load_space(str(ref))
    for params in enqueued:  # every enqueued value is one the space really offers
        for name, value in params.items():
            assert any(b.contains(value) for b in space.params[name]), (name, value)


BAD_NUMBERS = [
    pytest.param(["--n-trials", "0"], "Error: Invalid value for '--n-trials': 0 is not in the range x>=1.",
                 id="n-trials 0"),
    pytest.param(["--startup-trials", "-1"],
                 "Error: Invalid value for '--startup-trials': -1 is not in the range x>=0.", id="startup-trials -1"),
    pytest.param(["--min-resource", "0"],
                 "Error: Invalid value for '--min-resource': 0 is not in the range x>=1.", id="min-resource 0"),
    pytest.param(["--reduction-factor", "1"],
                 "Error: Invalid value for '--reduction-factor': 1 is not in the range x>=2.", id="reduction-factor 1"),
]


@pytest.mark.parametrize("options, message", BAD_NUMBERS)
def test_create_with_a_bad_budget_fails_and_creates_nothing(storage_url, tiny_space, options, message):
    args = ["create", "--study", "bad", *fast_args(tiny_space), *options, "--storage", storage_url]
    result = invoke(args)
    assert result.exit_code == 2  # click's usage error: the range is checked before anything runs
    assert result.stderr.splitlines()[-1] == message
    database = make_url(storage_url).database
    if storage_url.startswith("sqlite"):
        assert not Path(database).exists()
    else:
        assert optuna.get_all_study_names(storage=storage_url) == []


# --- passwords -------------------------------------------------------------------------

MASK_CASES = [
    ("postgresql+psycopg://u:secret@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql+psycopg://u:secret@h:5432/db?sslmode=require", "postgresql+psycopg://u:***@h:5432/db?sslmode=require"),
    ("postgresql://u:se%40cret@h/db", "postgresql://u:***@h/db"),
    ("postgresql+psycopg://u@h/db?password=secret", "postgresql+psycopg://u@h/db?password=***"),
    ("postgresql+psycopg://u:secret@h/db?sslmode=require&password=secret",
     "postgresql+psycopg://u:***@h/db?password=***&sslmode=require"),
    ("mysql+pymysql://u:secret@h/db", "mysql+pymysql://u:***@h/db"),
    ("postgresql+psycopg://u:secret@h:notaport/db", "postgresql+psycopg://u:***@h:notaport/db"),
    ("sqlite:////tmp/secret-free.db", "sqlite:////tmp/secret-free.db"),
]


@pytest.mark.parametrize("url, masked", MASK_CASES)
def test_mask_url_hides_every_password(url, masked):
    assert mask_url(url) == masked
    assert "secret" not in mask_url(url).replace("secret-free", "")


def with_password(url: str, form: str) -> str:
    """The same trust-auth database, with a password the server ignores (and we must never print)."""
    parsed = make_url(url)
    if form == "userinfo":
        return parsed.set(password="hunter2").render_as_string(hide_password=False)
    return parsed.update_query_dict({"password": "hunter2"}).render_as_string(hide_password=False)


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_create_and_status_never_print_the_password(postgres_url, tiny_space, tmp_path, form):
    url = with_password(postgres_url, form)
    masked = mask_url(url)
    assert "hunter2" in url and "hunter2" not in masked
    created = invoke(["create", "--study", "pw", *fast_args(tiny_space), "--n-trials", "2", "--storage", url,
                      "--artifacts", str(tmp_path / "art")])
    assert created.exit_code == 0, created.output
    assert created.stdout.splitlines()[0].startswith(f"created study pw in {masked}: ")
    for fmt in ("table", "json"):
        result = invoke(["status", "--storage", url, "--format", fmt])
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output
        if fmt == "table":
            assert result.stdout.splitlines() == [
                f"storage: {masked}",
                "study pw: 0/2 finished [waiting 2]; best val_accuracy none yet",
            ]
        else:
            assert json.loads(result.stdout)["storage"] == masked


UNREACHABLE_COMMANDS = [
    pytest.param(["status"], id="status"),
    pytest.param(["best", "--study", "x"], id="best"),
    pytest.param(["export", "--study", "x"], id="export"),
    pytest.param(["worker", "--study", "x"], id="worker"),
]


@pytest.mark.parametrize("command", UNREACHABLE_COMMANDS)
def test_an_unreachable_storage_error_names_the_url_without_its_password(command):
    url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nowhere"
    result = invoke([*command, "--storage", url])
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: cannot open storage postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere: "), result.output
    assert "hunter2" not in result.output
    assert len(result.output.splitlines()) == 1


# --- status with a running trial ---------------------------------------------------------

def test_status_lists_running_trials_with_host_device_epoch_and_metric(storage_url, tiny_space):
    study = library_study(storage_url, "live", tiny_space, n_trials=4, warm_start=False)
    done = study.ask()
    study.tell(done, 0.75)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    running = study.ask()
    for key, value in {"worker": "node7:4242:cuda", "device": "cuda:0", "epoch": 3, "last_metric": 0.5}.items():
        running.set_user_attr(key, value)
    started = load(storage_url, "live").trials[2].datetime_start.isoformat(timespec="seconds")

    report = json.loads(invoke(["status", "--storage", storage_url, "--study", "live", "--format", "json"]).stdout)
    (row,) = report["studies"][0]["running"]
    # No epoch report yet (no epoch_at): its start is its last sign of life.
    assert 0 <= row.pop("elapsed_s") == row.pop("silent_s") < 60
    assert report == {"storage": mask_url(storage_url), "studies": [{
        "name": "live", "tuner": True, "metric": "val_accuracy", "direction": "maximize", "n_trials": 4,
        "trials": 3, "finished": 2, "states": {"RUNNING": 1, "COMPLETE": 1, "PRUNED": 1, "FAIL": 0, "WAITING": 0},
        "failed": 0, "handed_back": 0, "over_budget": 0, "retried": 0, "duplicate": 0,
        "best": {"value": 0.75, "number": 0},
        "running": [{"number": 2, "worker": "node7:4242:cuda", "host": "node7", "device": "cuda:0", "epoch": 3,
                     "epochs": None, "last_metric": 0.5, "started": started, "stale": False}],
    }]}
    table = invoke(["status", "--storage", storage_url, "--study", "live"])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[:2] == [f"storage: {mask_url(storage_url)}",
                         "study live: 2/4 finished [running 1, complete 1, pruned 1]; best val_accuracy 0.7500 (trial 0)"]
    cells = [line.split() for line in lines[2:] if line.strip() and set(line.strip()) != {"─"}]
    assert cells[0] == ["trial", "host", "device", "epoch", "val_accuracy", "started", "elapsed", "last", "report"]
    assert cells[1][:6] == ["2", "node7", "cuda:0", "3", "0.5000", started]
    assert re.fullmatch(r"\d+s", cells[1][6]) and len(cells) == 2


# --- the read-only commands start without torch -------------------------------------------

# Runs in a fresh interpreter: this test process imported torch long ago.
NO_TORCH_SCRIPT = """\
import json, sys
from click.testing import CliRunner
from tuner.cli import cli
outputs = {}
for args in (["status"], ["best", "--study", "s"], ["best", "--study", "s", "--format", "yaml"],
             ["export", "--study", "s"], ["export", "--study", "s", "--format", "json"]):
    result = CliRunner().invoke(cli, [*args, "--storage", sys.argv[1]])
    outputs[" ".join(args)] = [result.exit_code, result.output]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"outputs": outputs, "torch": loaded}))
"""


def test_status_best_and_export_never_import_torch(tiny_space, tmp_path):
    """They only read the storage: importing torch (seconds) at their start was pure cost."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "s", tiny_space, n_trials=2, warm_start=False)
    add_finished_trial(study, 0.75, best_epoch=2, fixed_params={"patience": 5})

    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, url], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    outputs = report["outputs"]
    assert {args: code for args, (code, _) in outputs.items()} == dict.fromkeys(outputs, 0), outputs
    assert outputs["status"][1].splitlines()[1] == "study s: 1/2 finished [complete 1]; best val_accuracy 0.7500 (trial 0)"
    assert outputs["best --study s"][1] == (
        "study s: best val_accuracy = 0.7500 (trial 0)\n  lr: 0.005\n  patience: 5\n")
    assert yaml.safe_load(outputs["best --study s --format yaml"][1])["params"] == {
        "lr": {"type": "fixed", "value": 0.005}, "patience": {"type": "fixed", "value": 5}}
    assert outputs["export --study s"][1].splitlines()[0].startswith("number,state,value,")
    assert [t["value"] for t in json.loads(outputs["export --study s --format json"][1])["trials"]] == [0.75]
    assert report["torch"] == []


# --- a finished study: one per backend, shared by the read-only tests below -------------

@dataclass(frozen=True)
class Finished:
    url: str
    name: str
    root: Path
    run_output: str

    def study(self) -> optuna.Study:
        return load(self.url, self.name)


# The tiny space, head-only: head trials train on cached backbone features, in a blink.
HEAD_ONLY_SPACE = re.sub(r"  backbone_lr:\n(    .*\n)+", "", TINY_SPACE).replace(
    "choices: [head, last_blocks]", "choices: [head]")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def finished(request, tmp_path_factory):
    """`tuner run` of a 2-trial study, run once per backend and shared by the read-only tests."""
    root = tmp_path_factory.mktemp(f"finished-{request.param}")
    database = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'study.db'}"
    else:
        if not request.getfixturevalue("postgres_available"):
            pytest.skip("PostgreSQL is not reachable (CI requires it; set TUNER_TEST_POSTGRES_URL)")
        database = f"tuner_t_{uuid.uuid4().hex[:12]}"  # unique, like conftest's postgres_url
        with _admin_engine().connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
        url = make_url(postgres_admin_url()).set(database=database).render_as_string(hide_password=False)
    space = root / "tiny.yaml"
    space.write_text(HEAD_ONLY_SPACE)
    try:
        result = invoke(["run", "--study", "out", *fast_args(space), "--n-trials", "2", "--storage", url,
                         "--artifacts", str(root / "artifacts"), "--device", "cpu", "--quiet"])
        assert result.exit_code == 0, result.output
        yield Finished(url, "out", root, result.stdout)
    finally:
        if database is not None:
            engine = _admin_engine()
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            engine.dispose()


def test_run_finishes_the_budget_starting_with_the_warm_start(finished):
    study = finished.study()
    trials = study.get_trials()
    assert [t.state for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)] == []
    assert len(trials) == 2
    # Only the head-only recommendation fits this space; the second trial is sampled.
    assert {k: trials[0].params[k] for k in HEAD} == HEAD and trials[0].user_attrs["warm_start"] is True
    assert "warm_start" not in trials[1].user_attrs
    for trial in trials:
        assert trial.user_attrs["lineage"] == trial.number
        assert sorted(trial.intermediate_values) == list(range(1, trial.user_attrs["epochs_run"] + 1))
        assert trial.user_attrs["epochs_run"] <= 2  # --max-epochs 2 caps the sampled 2..3
    best = study.best_trial
    assert finished.run_output.splitlines()[:2] == [
        "created study out (2 trials, metric val_accuracy)",
        "finished 2/2 trials (2 run by this process)",
    ]
    assert f"  {best.value:.4f}  trial {best.number}: " in finished.run_output


def test_every_trial_records_its_best_epochs_value(finished):
    """A pruned trial has no value in Optuna: best_value ranks it for the study's best without re-reading history."""
    for trial in finished.study().get_trials():
        metrics = [row["metric"] for row in trial.user_attrs["history"]]
        assert trial.user_attrs["best_value"] == max(metrics) == metrics[trial.user_attrs["best_epoch"] - 1]
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["best_value"] == trial.value


def test_status_of_a_finished_study(finished):
    study = finished.study()
    best = study.best_trial
    states = {s.name: 0 for s in TrialState}
    for trial in study.trials:
        states[trial.state.name] += 1
    shown = ", ".join(f"{k.lower()} {v}" for k, v in states.items() if v)
    table = invoke(["status", "--storage", finished.url])
    assert table.exit_code == 0
    assert table.stdout == (f"storage: {mask_url(finished.url)}\n"
                            f"study out: 2/2 finished [{shown}]; best val_accuracy {best.value:.4f} "
                            f"(trial {best.number})\n")
    report = json.loads(invoke(["status", "--storage", finished.url, "--format", "json"]).stdout)
    assert report["studies"][0]["states"] == states
    assert report["studies"][0]["best"] == {"value": best.value, "number": best.number}
    assert report["studies"][0]["running"] == []


def test_best_as_table_and_json(finished):
    best = finished.study().best_trial
    params = dict(sorted(all_params(best).items()))
    assert set(params) >= {"freeze", "lr", "optimizer", "batch_size", "epochs", "loss", "patience"}
    # What ran: the study caps epochs at 2 (--max-epochs), and the count shown is the one trained.
    epochs = {"sampled": params["epochs"], "planned": min(params["epochs"], 2),
              "trained": best.user_attrs["epochs_run"], "stop_reason": best.user_attrs["stop_reason"]}
    cut = f" (sampled {params['epochs']}, cut by --max-epochs 2)" if params["epochs"] > 2 else ""
    shown = {**params, "epochs": f"{epochs['trained']}{cut}"}
    table = invoke(["best", "--study", "out", "--storage", finished.url])
    assert table.exit_code == 0
    assert table.stdout.splitlines() == [
        f"study out: best val_accuracy = {best.value:.4f} (trial {best.number})",
        *(f"  {k}: {significant(v)}" for k, v in shown.items()),
    ]
    summary = json.loads(invoke(["best", "--study", "out", "--storage", finished.url, "--format", "json"]).stdout)
    assert summary == {"study": "out", "metric": "val_accuracy", "value": best.value, "number": best.number,
                       "params": {**params, "epochs": epochs["trained"]}, "best_epoch": best.user_attrs["best_epoch"],
                       "epochs": epochs}


def test_best_as_yaml_is_a_space_that_fixes_every_best_param(finished, tmp_path):
    best = finished.study().best_trial
    result = invoke(["best", "--study", "out", "--storage", finished.url, "--format", "yaml"])
    assert result.exit_code == 0
    doc = yaml.safe_load(result.stdout)
    assert doc["settings"] == {"model": "resnet18", "weights": "none", "image_size": 16, "max_epochs": 2}
    ran = {**all_params(best), "epochs": min(all_params(best)["epochs"], 2)}
    assert doc["params"] == {k: {"type": "fixed", "value": v} for k, v in ran.items()}
    path = tmp_path / "best.yaml"
    path.write_text(result.stdout)
    validated = invoke(["space", "validate", str(path)])
    assert validated.exit_code == 0, validated.output
    assert validated.stdout == f"best.yaml: OK ({len(doc['params'])} parameters)\n"


def test_best_shows_the_epochs_trained_and_its_yaml_runs_the_same_configuration_again(tiny_space, tmp_path):
    """With --max-epochs 2 it used to print `epochs: 22`, the count sampled but never run."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "cut", tiny_space, n_trials=2, warm_start=False)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 5e-3, "epochs": 22},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True),
                       "epochs": optuna.distributions.IntDistribution(2, 30)},
        value=0.5, user_attrs={"epochs_run": 2, "best_epoch": 2, "stop_reason": "completed"}))
    table = invoke(["best", "--study", "cut", "--storage", url])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[1:] == ["  epochs: 2 (sampled 22, cut by --max-epochs 2)", "  lr: 0.005"]
    spec = invoke(["best", "--study", "cut", "--storage", url, "--format", "yaml"])
    doc = yaml.safe_load(spec.stdout)
    assert doc["settings"] == {"model": "resnet18", "weights": "none", "image_size": 16, "max_epochs": 2}
    assert doc["params"] == {"epochs": {"type": "fixed", "value": 2}, "lr": {"type": "fixed", "value": 0.005}}
    # The file alone recreates the study's settings: no --weights, --image-size or --max-epochs given.
    (tmp_path / "best.yaml").write_text(spec.stdout)
    created = invoke(["create", "--study", "again", "--space", str(tmp_path / "best.yaml"), "--data", "digits",
                      "--storage", url, "--n-trials", "1"])
    assert created.exit_code == 0, created.output
    stored = StudyConfig.from_attr(load(url, "again").user_attrs["tuner_config"])
    assert (stored.model, stored.weights, stored.image_size, stored.max_epochs) == ("resnet18", "none", 16, 2)


def test_export_csv_has_one_row_per_trial_with_param_and_attr_columns(finished, tmp_path):
    trials = finished.study().get_trials()
    result = invoke(["export", "--study", "out", "--storage", finished.url])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    header = list(rows[0])
    assert header[:5] == ["number", "state", "value", "datetime_start", "datetime_complete"]
    assert header[-1] == "intermediate_values"
    assert {h for h in header if h.startswith("params_")} == {f"params_{k}" for t in trials for k in all_params(t)}
    assert {h for h in header if h.startswith("user_attrs_")} == {
        f"user_attrs_{k}" for t in trials for k in t.user_attrs}
    for row, trial in zip(rows, trials):
        assert row["state"] == trial.state.name
        assert row["value"] == ("" if trial.value is None else str(trial.value))
        assert all(row[f"params_{k}"] == str(v) for k, v in all_params(trial).items())
        assert row["user_attrs_lineage"] == str(trial.number)
        assert json.loads(row["user_attrs_history"]) == trial.user_attrs["history"]
        assert json.loads(row["intermediate_values"]) == {str(k): v for k, v in trial.intermediate_values.items()}
    out = tmp_path / "trials.csv"
    written = invoke(["export", "--study", "out", "--storage", finished.url, "--out", str(out)])
    assert written.stdout == f"wrote {out}\n"
    assert out.read_text() == result.stdout


def test_export_json_has_every_trial(finished, tmp_path):
    trials = finished.study().get_trials()
    out = tmp_path / "trials.json"
    result = invoke(["export", "--study", "out", "--storage", finished.url, "--format", "json", "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == f"wrote {out}\n"
    doc = json.loads(out.read_text())
    assert doc["study"] == "out"
    assert [(r["number"], r["state"], r["value"]) for r in doc["trials"]] == [
        (t.number, t.state.name, t.value) for t in trials]
    for record, trial in zip(doc["trials"], trials):
        assert record["params"] == all_params(trial)
        assert record["user_attrs"] == trial.user_attrs
        assert record["intermediate_values"] == {str(k): v for k, v in trial.intermediate_values.items()}


# Report, retrain and the --gpus check read the study as the tests above do, on both backends;
# what they add (plots, training, option checks) does not depend on the backend: one is enough.
ONE_BACKEND = pytest.mark.parametrize("finished", ["sqlite"], indirect=True)


@ONE_BACKEND
def test_report_writes_valid_pngs_that_index_html_shows(finished, tmp_path):
    out = tmp_path / "report"
    result = invoke(["report", "--study", "out", "--storage", finished.url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"wrote {out / 'index.html'}; uploaded 5 files as study artifacts "
                             "(optuna-dashboard: Study Artifacts)\n")
    index = (out / "index.html").read_text()
    shown = re.findall(r'<img src="([^"]+)"', index)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(shown) == pngs
    # Two finished trials are enough for every plot, importances included.
    assert pngs == ["learning_curves.png", "optimization_history.png", "parallel_coordinate.png",
                    "param_importances.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as image:
            image.verify()
    assert "<h1>Study out</h1>" in index and "Not available yet" not in index


@ONE_BACKEND
def test_retrain_writes_loadable_weights_and_a_model_description(finished, tmp_path):
    best = finished.study().best_trial
    out = tmp_path / "model"
    result = invoke(["retrain", "--study", "out", "--storage", finished.url, "--out", str(out), "--epochs", "1",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    description = json.loads((out / "model.json").read_text())
    assert result.stdout == (f"trained resnet18 for 1 epoch on {description['train_images']} images: "
                             f"val_accuracy = {description['value']:.4f} (val); "
                             f"wrote {out} (weights.pt, model.json, README.md)\n")
    assert description["params"] == {**all_params(best), "epochs": 1}
    assert description["classes"] == [str(i) for i in range(10)]
    assert description["metric"] == "val_accuracy"
    assert description["trial"] == best.number and description["image_size"] == 16
    # Same seed (study seed + lineage), same first epoch: on CPU the value is the trial's epoch-1 value.
    assert description["value"] == best.intermediate_values[1]
    # The weights load into the plain torchvision model, the obvious way.
    state = torch.load(out / "weights.pt", weights_only=True)
    torchvision.models.resnet18(num_classes=10).load_state_dict(state)


# The head-only space with `epochs` fixed instead of sampled.
FIXED_EPOCHS_SPACE = HEAD_ONLY_SPACE.replace("  epochs:\n    type: int\n    low: 2\n    high: 3\n",
                                             "  epochs: {type: fixed, value: 3}\n")


def test_retrain_epochs_wins_over_epochs_that_the_space_fixes(tmp_path):
    """--epochs used to go into the trial's params only, which a fixed `epochs` never reads."""
    assert "epochs: {type: fixed, value: 3}" in FIXED_EPOCHS_SPACE
    space = tmp_path / "fixed.yaml"
    space.write_text(FIXED_EPOCHS_SPACE)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ran = invoke(["run", "--study", "f", "--space", str(space), "--data", "digits", "--image-size", "16",
                  "--weights", "none", "--n-trials", "1", "--pruner", "none", "--storage", url,
                  "--artifacts", str(tmp_path / "artifacts"), "--device", "cpu", "--quiet"])
    assert ran.exit_code == 0, ran.output
    best = load(url, "f").best_trial
    assert (best.user_attrs["fixed_params"]["epochs"], best.user_attrs["epochs_run"]) == (3, 3)

    out = tmp_path / "model"
    result = invoke(["retrain", "--study", "f", "--storage", url, "--out", str(out), "--epochs", "1",
                     "--device", "cpu"])

    assert result.exit_code == 0, result.output
    description = json.loads((out / "model.json").read_text())
    assert result.stdout.startswith("trained resnet18 for 1 epoch on ")
    assert description["epochs_run"] == 1
    assert description["params"] == {**all_params(best), "epochs": 1}
    # Same seed, and one epoch of it: the trial's own epoch-1 value.
    assert description["value"] == best.intermediate_values[1]


# --- in-process runs, one after another ---------------------------------------------------

def test_two_in_process_worker_runs_each_get_their_own_log_lines(tiny_space, tmp_path):
    """The worker's log handler writes to sys.stderr as it is now: it used to keep the stream of
    the first run in the process, so a later CliRunner run lost its lines to a dead stream."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "spent", tiny_space, n_trials=1, warm_start=False,
                          artifacts=str(tmp_path / "artifacts"))
    add_finished_trial(study, 0.5)
    name = f"{socket.gethostname()}:{os.getpid()}:auto"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["worker", "--study", "spent", "--storage", url])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == "finished 1/1 trial (0 run by this process)"
        assert re.findall(r"^\d\d:\d\d:\d\d \[(.+?)\] (.*)$", result.stderr, re.M) == [
            (name, "budget of 1 trial already taken; nothing to do (raise it with tuner extend --study spent "
                   "--n-trials N)")]


def worker_beside(others: threading.Thread, url: str, study: str):
    """`tuner worker --quiet` in this process while the thread `others` plays other workers."""
    others.start()
    try:
        return CliRunner().invoke(cli, ["worker", "--study", study, "--storage", url, "--quiet"])
    finally:
        others.join()


def test_a_worker_whose_budget_is_taken_leaves_soon_after_the_last_running_trial_ends(tiny_space, tmp_path):
    """It waits for the others' running trials (one may die and need its retry), polling
    quickly at first: a fixed 5 s poll kept every short study waiting that long at its end."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "last", tiny_space, n_trials=1, warm_start=False)
    other = study.ask()  # another worker's trial, still running when this worker starts
    ended = {}

    def end_it() -> None:
        study.tell(other, 0.5)
        ended["at"] = time.monotonic()

    result = worker_beside(threading.Timer(1.0, end_it), url, "last")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "finished 1/1 trial (0 run by this process)"
    assert "  0.5000  trial 0" in result.stdout.splitlines()
    assert time.monotonic() - ended["at"] < 2.5


def test_slots_taken_by_others_during_a_trial_stop_the_worker_before_it_creates_another(tiny_space, tmp_path):
    """After each trial the worker counts the budget before Optuna creates the next trial: it used
    to skip the count below the budget's trial number, and a trial 3 was created and marked over
    budget (a FAIL at the end of every normal two-worker run)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = library_study(url, "racing", tiny_space, n_trials=3, warm_start=False,
                          artifacts=str(tmp_path / "artifacts"))

    def others_take_the_rest() -> None:
        deadline = time.monotonic() + 60
        while not study.get_trials(states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
            time.sleep(0.01)
        for value in (0.1, 0.2):  # trials 1 and 2, finished while this worker trains trial 0
            add_finished_trial(study, value)

    result = worker_beside(threading.Thread(target=others_take_the_rest), url, "racing")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "finished 3/3 trials (1 run by this process)"
    trials = load(url, "racing").get_trials()
    assert [(t.state, t.user_attrs.get("over_budget")) for t in trials] == [(TrialState.COMPLETE, None)] * 3


@pytest.mark.parametrize("error, shown", [
    pytest.param(OverBudget("trial 0 started after the budget was taken"), False, id="over budget"),
    pytest.param(HandBack("stopping before the trial started"), False, id="handed back"),
    pytest.param(TakenOver("trial 0 was ended by another worker"), False, id="taken over"),
    pytest.param(ValueError("a real bug"), True, id="any other error"),
])
def test_optuna_failure_warnings_are_dropped_only_for_trials_the_worker_ends_on_purpose(capfd, error, shown):
    def objective(trial):
        raise error

    study = optuna.create_study()
    with ExpectedStops().installed():
        study.optimize(objective, n_trials=1, catch=(OverBudget, HandBack, TakenOver, ValueError))
    study.optimize(objective, n_trials=1, catch=(ValueError, OverBudget, HandBack, TakenOver))  # filter removed

    err = capfd.readouterr().err
    assert ("Trial 0 failed" in err, "Trial 0 failed with value None." in err) == (shown, shown)
    assert "Trial 1 failed with value None." in err and "Traceback" in err


MISMATCH_CASES = [
    pytest.param(["--model", "resnet34"], 1,
                 "Error: study 'out' already exists with a different config: --model (study has 'resnet18', "
                 "given 'resnet34'). Use another --study name, or leave those options out to continue it\n",
                 id="model"),
    pytest.param(["--n-trials", "5"], 1,
                 "Error: study 'out' already exists with a different config: --n-trials (study has 2, given 5; "
                 "raise the budget with `tuner extend`). Use another --study name, or leave those options out to continue it\n",
                 id="n-trials"),
    pytest.param(["--n-trials", "5", "--seed", "3"], 1,
                 "Error: study 'out' already exists with a different config: --n-trials (study has 2, given 5; "
                 "raise the budget with `tuner extend`); --seed (study has 0, given 3). Use another --study name, or leave those options out to "
                 "continue it\n",
                 id="n-trials and seed"),
    pytest.param(["--n-trials", "2", "--device", "cpu"], 0,
                 "continuing study out (2 trials, metric val_accuracy)\nfinished 2/2 trials (0 run by this process)\n",
                 id="same n-trials continues"),
]


@pytest.mark.parametrize("options, code, output", MISMATCH_CASES)
def test_run_against_an_existing_study_refuses_a_different_config(finished, options, code, output):
    before = len(finished.study().trials)
    result = invoke(["run", "--study", "out", "--storage", finished.url, "--quiet", *options])
    assert result.exit_code == code
    assert result.output.startswith(output), result.output
    assert len(finished.study().trials) == before


GPU_SPECS = ["all", "0", "0,1"]


@ONE_BACKEND
@pytest.mark.parametrize("spec", GPU_SPECS)
def test_worker_gpus_without_a_gpu_is_one_clear_error(finished, spec):
    # A worker process that sees no GPU, on any machine: CUDA_VISIBLE_DEVICES hides them all
    # (in this process CUDA may already be initialized, and would ignore it).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "tuner", "worker", "--study", "out", "--storage", finished.url,
                             "--gpus", spec], env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"Error: --gpus {spec}: no CUDA GPU is visible on this node (use --device cpu)\n"


def test_a_sqlite_study_file_is_in_write_ahead_log_mode(tmp_path):
    open_storage(StorageSettings(url=f"sqlite:///{tmp_path / 'x.db'}"), heartbeat=False)
    with sqlite3.connect(tmp_path / "x.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_sqlite_file_in_a_missing_folder_is_a_storage_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    with pytest.raises(StorageError) as excinfo:
        open_storage(StorageSettings(url=url), heartbeat=False)
    assert str(excinfo.value) == f"cannot open storage {url}: unable to open database file"
