"""One truth per study: continuing a study takes every setting from its stored config, a
contradicting flag is an error, and a worker with other data is refused before it writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tuner.cli import cli
from tuner.cli._options import machine_options, storage_settings, study_request
from tuner.training._data import DataConfig, load_data
from tuner.service._prepare import prepare_study
from tuner.service._worker import Worker

pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data_sources.DataWarning")


def create(url: str, space: Path, *extra: str, data: str = "digits", n_trials: str = "1"):
    result = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--space", str(space),
                                      "--data", data, "--weights", "none", "--n-trials", n_trials, *extra])
    assert result.exit_code == 0, result.output
    return result


def continued_worker(url: str, *args: str) -> tuple[Worker, object]:
    """What `tuner run --study s --storage URL --device cpu ARGS` builds, through the same calls."""
    ctx = cli.commands["run"].make_context("run", ["--study", "s", "--storage", url, "--device", "cpu", *args])
    params = ctx.params
    opened = prepare_study(storage_settings(params), "s", study_request(ctx, params), machine_options(params))
    worker = Worker(opened)
    return worker, worker.build_objective()


def digits(image_size: int = 16, val_fraction: float = 0.2, seed: int = 0):
    return load_data(DataConfig("digits", image_size, val_fraction, seed))


# flag and value given at creation (never the default), and what the continued worker runs with
STORED_SETTINGS = [
    pytest.param(["--image-size", "20"], lambda w, o: (o.settings.image_size, o.data.train_images.shape[-1]) == (20, 20),
                 id="image size"),
    pytest.param(["--seed", "3"], lambda w, o: o.settings.seed == 3 and torch.equal(
        o.data.val_images, digits(seed=3).val_images) and not torch.equal(o.data.val_images, digits().val_images),
                 id="seed (the validation split)"),
    pytest.param(["--val-fraction", "0.3"], lambda w, o: len(o.data.val_targets) == len(digits(val_fraction=0.3).val_targets),
                 id="val fraction"),
    pytest.param([], lambda w, o: o.settings.weights == "none", id="weights none (no imagenet download)"),
    pytest.param(["--model", "mobilenet_v3_small"], lambda w, o: o.settings.model == "mobilenet_v3_small",
                 id="model"),
    pytest.param(["--cache-views", "2"], lambda w, o: o.settings.cache_views == 2 and o.cache.config.views == 2,
                 id="cache views"),
    pytest.param(["--max-epochs", "1"], lambda w, o: o.settings.max_epochs == 1, id="max epochs"),
    pytest.param(["--heartbeat-interval", "7"], lambda w, o: (
        w.storage_settings.heartbeat_interval, w.storage.heartbeat_interval) == (7, 7), id="heartbeat interval"),
    pytest.param(["--grace-period", "50"], lambda w, o: (
        w.storage_settings.grace_period, w.storage.grace_period) == (50, 50), id="grace period"),
    pytest.param(["--max-retry", "1"], lambda w, o: (
        w.storage_settings.max_retry, w.storage.failed_trial_callback.max_retry) == (1, 1), id="max retry"),
    pytest.param(["--sampler", "random"], lambda w, o: isinstance(w.study.sampler, optuna.samplers.RandomSampler),
                 id="sampler"),
    pytest.param(["--pruner", "median"], lambda w, o: isinstance(w.study.pruner, optuna.pruners.MedianPruner),
                 id="pruner"),
    pytest.param(["--n-trials", "3"], lambda w, o: w.config.n_trials == 3, id="budget"),
    pytest.param(["--startup-trials", "2"], lambda w, o: getattr(w.study.sampler, "base", w.study.sampler)._n_startup_trials == 2,
                 id="startup trials"),
    pytest.param(["--pruner", "asha", "--min-resource", "2", "--reduction-factor", "4"],
                 lambda w, o: (w.study.pruner._min_resource, w.study.pruner._reduction_factor) == (2, 4),
                 id="min resource and reduction factor"),
    pytest.param(["--rung-signal", "best", "--rung-margin", "2"],
                 lambda w, o: (w.study.pruner.signal, w.study.pruner.margin) == ("best", 2 / len(o.data.val_targets)),
                 id="rung signal and margin"),
]


@pytest.mark.parametrize("flag, used", STORED_SETTINGS)
def test_continuing_without_the_flag_uses_the_stored_setting(tmp_path, tiny_space, flag, used):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space, *flag)
    worker, objective = continued_worker(url)
    assert used(worker, objective)


def test_continuing_with_the_stored_values_given_again_is_fine(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space, "--image-size", "20", "--seed", "3", "--heartbeat-interval", "7")
    worker, objective = continued_worker(url, "--image-size", "20", "--seed", "3", "--heartbeat-interval", "7",
                                         "--weights", "none", "--space", str(tiny_space))
    assert (objective.settings.image_size, objective.settings.seed, worker.storage.heartbeat_interval) == (20, 3, 7)


CONTRADICTIONS = [
    pytest.param(["--image-size", "32"], "--image-size (study has 20, given 32)", id="image size"),
    pytest.param(["--seed", "4"], "--seed (study has 3, given 4)", id="seed"),
    pytest.param(["--weights", "imagenet"], "--weights (study has 'none', given 'imagenet')", id="weights"),
    pytest.param(["--heartbeat-interval", "5"], "--heartbeat-interval (study has 7, given 5)", id="heartbeat"),
    pytest.param(["--grace-period", "99"], "--grace-period (study has 120, given 99)", id="grace period"),
    pytest.param(["--max-retry", "0"], "--max-retry (study has 3, given 0)", id="max retry"),
    pytest.param(["--cache-views", "1"], "--cache-views (study has 4, given 1)", id="cache views"),
    pytest.param(["--val-fraction", "0.5"], "--val-fraction (study has 0.2, given 0.5)", id="val fraction"),
    pytest.param(["--no-warm-start"], "--no-warm-start (study has True, given False)", id="warm start"),
    pytest.param(["--startup-trials", "4"], "--startup-trials (study has 10, given 4)", id="startup trials"),
    pytest.param(["--min-resource", "2"], "--min-resource (study has 1, given 2)", id="min resource"),
    pytest.param(["--reduction-factor", "2"], "--reduction-factor (study has 3, given 2)", id="reduction factor"),
    pytest.param(["--rung-signal", "best"], "--rung-signal (study has 'last', given 'best')", id="rung signal"),
    pytest.param(["--rung-margin", "1"], "--rung-margin (study has 0, given 1)", id="rung margin"),
]


@pytest.mark.parametrize("flag, difference", CONTRADICTIONS)
def test_a_flag_that_contradicts_the_stored_config_is_an_error_naming_both_values(tmp_path, tiny_space, flag,
                                                                                 difference):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space, "--image-size", "20", "--seed", "3", "--heartbeat-interval", "7", "--grace-period",
           "120")
    before = optuna.load_study(study_name="s", storage=url).trials
    result = CliRunner().invoke(cli, ["run", "--study", "s", "--storage", url, "--device", "cpu", *flag])
    assert result.exit_code == 1
    assert result.output == (f"Error: study 's' already exists with a different config: {difference}. "
                             "Use another --study name, or leave those options out to continue it\n")
    assert optuna.load_study(study_name="s", storage=url).trials == before


def test_run_continues_a_study_made_offline_with_its_stored_size_and_weights(tmp_path, tiny_space, offline_hub):
    """Continued without flags, it used to decode at 224 px and fetch imagenet weights (offline: fail)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space, "--image-size", "20", "--max-epochs", "1", "--artifacts", str(tmp_path / "art"))
    result = CliRunner().invoke(cli, ["run", "--study", "s", "--storage", url, "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["continuing study s (1 trial, metric val_accuracy)",
                                              "finished 1/1 trial (1 run by this process)"]
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["epochs_run"] == 1


# --- the data fingerprint ----------------------------------------------------------------

def add_class(folder: Path, name: str) -> None:
    (folder / name).mkdir()
    for index in range(6):
        Image.new("RGB", (12, 12), (index * 40, 100, 100)).save(folder / name / f"{index}.png")


def other_sizes(folder: Path) -> None:
    """Same names, classes and counts; one file replaced by another image."""
    Image.new("RGB", (30, 30), (1, 2, 3)).save(folder / "dark" / "0.png")


def drop_one(folder: Path) -> None:
    for path in sorted((folder / "bright").glob("*.png"))[:3]:
        path.unlink()


OTHER_DATA = [
    pytest.param(lambda f: add_class(f, "fox"),
                 "classes differ: study has [bright, dark], data has [bright, dark, fox]", id="one class more"),
    pytest.param(drop_one, "train images per class differ: study has {bright: 16, dark: 16}, "
                           "data has {bright: 14, dark: 16}", id="fewer images"),
    pytest.param(other_sizes, "file names or sizes differ (same classes and counts per class)", id="other files"),
]


@pytest.fixture
def folder_study(tmp_path, tiny_space, image_folder):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space, "--max-epochs", "1", "--no-warm-start", "--artifacts", str(tmp_path / "art"),
           data=str(image_folder))
    return url


def copy_of(image_folder: Path, tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere" / "images"
    shutil.copytree(image_folder, other)
    return other


@pytest.mark.parametrize("change, message", OTHER_DATA)
@pytest.mark.parametrize("command", ["worker", "run", "retrain"])
def test_other_data_is_refused_with_what_differs_and_nothing_written(folder_study, image_folder, tmp_path,
                                                                     change, message, command):
    other = copy_of(image_folder, tmp_path)
    change(other)
    url = folder_study
    if command == "retrain":
        study = optuna.load_study(study_name="s", storage=url)
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    before = optuna.load_study(study_name="s", storage=url).trials
    args = {"worker": ["worker", "--study", "s", "--storage", url, "--device", "cpu", "--data", str(other)],
            "run": ["run", "--study", "s", "--storage", url, "--device", "cpu", "--data", str(other)],
            "retrain": ["retrain", "--study", "s", "--storage", url, "--device", "cpu", "--data", str(other),
                        "--out", str(tmp_path / "model")]}[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: data {other} is not this study's data: {message}"), result.output
    assert len(result.output.splitlines()) == 1
    assert optuna.load_study(study_name="s", storage=url).trials == before
    assert not (tmp_path / "model").exists()


def test_the_same_images_at_another_path_are_fine(folder_study, image_folder, tmp_path):
    other = copy_of(image_folder, tmp_path)
    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", folder_study, "--device", "cpu",
                                      "--data", str(other), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "finished 1/1 trial (1 run by this process)"


def test_the_fingerprint_is_stored_at_creation(folder_study):
    stored = optuna.load_study(study_name="s", storage=folder_study).user_attrs["tuner_config"]["data_fingerprint"]
    assert stored["classes"] == ["bright", "dark"]
    assert stored["train_counts"] == {"bright": 16, "dark": 16}
    assert stored["val_counts"] == {"bright": 4, "dark": 4}
    assert len(stored["content"]) == 16


def test_one_process_parses_the_space_once(tmp_path, tiny_space):
    """Sampler, pruner and objective share one parsed space (a `tuner run` parsed it six times)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, tiny_space)
    worker, objective = continued_worker(url)
    assert objective.space is worker.opened.space
