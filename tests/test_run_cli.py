"""`tuner run` end to end through click's CliRunner on real SQLite studies and real (tiny) models."""

from __future__ import annotations


import optuna
import pytest
import torch
import torchvision
from click.testing import CliRunner
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from tuner.search import best_value_of, study_best
from tuner.service._checkpoints import BEST_WEIGHTS_ATTR
from tuner.cli import cli
from tuner.training._data_sources import DataWarning
from tuner.training._models import weights_cache_path

# The data of every run here has one corrupt file; only the first test looks at the warning.
pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data_sources.DataWarning")

HEAD_PARAMS = 512 * 2 + 2  # the new Linear(512, 2) of resnet18
LAYER4_PARAMS = sum(p.numel() for n, p in torchvision.models.resnet18().named_parameters() if n.startswith("layer4."))
# Head only and one epoch: a single quick trial whose backbone stays exactly as loaded.
HEAD_SPACE = """\
settings: {model: resnet18, image_size: 16}
params:
  freeze: {type: fixed, value: head}
  lr: {type: fixed, value: 1.0e-3}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: 1}
"""
CONFLICT = "Error: study 's' already exists with a different config: "


@pytest.fixture
def runner():
    return CliRunner()


def run_args(data, space, db: str, **options: str) -> list[str]:
    """`tuner run` on DATA with the test defaults; options override them (n_trials="5" -> --n-trials 5)."""
    values = {"weights": "none", "n_trials": "4", "max_epochs": "2", "device": "cpu", "study": "s", **options}
    args = ["run", "--data", str(data), "--space", str(space), "--storage", db]
    for name, value in values.items():
        args += [f"--{name.replace('_', '-')}", value]
    return args


def check_finished_trial(trial: optuna.trial.FrozenTrial, max_epochs: int) -> None:
    attrs = trial.user_attrs
    epochs = attrs["epochs_run"]
    assert 1 <= epochs <= max_epochs
    assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))  # one report per epoch
    assert len(attrs["history"]) == epochs
    assert attrs["device"] == "cpu"
    assert attrs["trainable_params"] == {"head": HEAD_PARAMS, "last_blocks": LAYER4_PARAMS + HEAD_PARAMS}[
        trial.params["freeze"]]
    assert isinstance(attrs["train_seconds"], float) and attrs["train_seconds"] > 0
    assert attrs["best_epoch"] in trial.intermediate_values
    if trial.state == TrialState.COMPLETE:
        assert attrs["stop_reason"] == "completed"  # patience 5 cannot fire within 2 epochs
        assert trial.value == max(trial.intermediate_values.values()) == trial.intermediate_values[attrs["best_epoch"]]
    else:
        assert (trial.state, attrs["stop_reason"]) == (TrialState.PRUNED, "pruned")


def test_run_end_to_end_on_sqlite(runner, image_folder, tiny_space, tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    # --memory-limit 0: the decoded images are memory-mapped from a file beside the study.
    with pytest.warns(DataWarning) as caught:
        result = runner.invoke(cli, run_args(image_folder, tiny_space, db, memory_limit="0"))

    assert result.exit_code == 0, result.output
    assert result.exception is None
    skipped = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert skipped and all(m == f"skipped 1 unreadable file in {image_folder}: dark/corrupt.png" for m in skipped)

    # Its file was unlinked as soon as it was mapped: nothing is left behind.
    assert (tmp_path / "x-decoded").is_dir() and list((tmp_path / "x-decoded").iterdir()) == []
    study = optuna.load_study(study_name="s", storage=db)
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in study.trials:
        check_finished_trial(trial, max_epochs=2)
    assert study.metric_names == ["val_accuracy"]

    best = study_best(study)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["created study s (4 trials, metric val_accuracy)", "finished 4/4 trials (4 run by this process)"]
    assert lines[2].startswith(f"study s in {db}: wall time ")
    # The top trials: the completed ones and, at their best epoch, those the pruner stopped.
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)  # all for stop_reason pruned, as checked above
    scope = (f"{complete} completed and {pruned} pruned trial{'s' * (pruned != 1)} (each at its best epoch)" if pruned
             else f"{complete} completed trial{'s' * (complete != 1)}")
    assert lines[4] == f"top {min(complete + pruned, 3)} of {scope} by val_accuracy:"
    assert lines[5].startswith(f"  {best_value_of(best):.4f}  trial {best.number}")
    assert f"  tuner retrain --study s --storage {db} --out model" in lines


def test_run_loads_imagenet_weights_offline_from_the_hub_cache(runner, image_folder, tmp_path, offline_hub):
    torch.manual_seed(3)
    saved = torchvision.models.resnet18().state_dict()
    path = weights_cache_path("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    space = tmp_path / "head.yaml"
    space.write_text(HEAD_SPACE)
    db = f"sqlite:///{tmp_path / 'x.db'}"

    result = runner.invoke(cli, run_args(image_folder, space, db, weights="imagenet", n_trials="1"))

    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=db)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    config = study.user_attrs["tuner_config"]
    assert config["weights"] == "imagenet"
    # The kept best weights: the frozen backbone is exactly the cached file's.
    store = FileSystemArtifactStore(config["artifacts"])
    with store.open_reader(trial.user_attrs[BEST_WEIGHTS_ATTR]) as reader:
        kept = torch.load(reader, weights_only=True)["model"]
    backbone = [k for k in saved if not k.startswith("fc.")]
    assert backbone and all(torch.equal(kept[k], saved[k]) for k in backbone)


def test_run_with_imagenet_weights_and_an_empty_cache_fails_with_the_fix(runner, image_folder, tiny_space,
                                                                         tmp_path, offline_hub):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(cli, run_args(image_folder, tiny_space, db, weights="imagenet"))

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a handled error, no traceback
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith("Error: cannot load imagenet weights for resnet18 (")
    assert f"put the file https://download.pytorch.org/models/resnet18-f37072fd.pth at {weights_cache_path('resnet18')}" in errors[0]
    assert errors[0].endswith("or pass --weights none (random init) or --weights PATH (a local state dict)")
    # Nothing was created, so the advice (--weights none, same study name) works as given.
    assert optuna.get_all_study_names(storage=db) == []


@pytest.mark.parametrize(
    ("options", "difference"),
    [
        pytest.param({"n_trials": "5"}, "--n-trials (study has 1, given 5; raise the budget with `tuner extend`)", id="n-trials"),
        pytest.param({"model": "mobilenet_v3_small"}, "--model (study has 'resnet18', given 'mobilenet_v3_small')", id="model"),
        pytest.param({}, None, id="same-options-continue"),
        pytest.param({"memory_limit": "0.5", "device": "cpu"}, None, id="machine-local-options-continue"),
    ],
)
def test_a_second_run_with_a_different_config_is_refused(runner, image_folder, tiny_space, tmp_path, options,
                                                         difference):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    first = runner.invoke(cli, run_args(image_folder, tiny_space, db, n_trials="1", max_epochs="1"))
    assert first.exit_code == 0, first.output

    second = runner.invoke(cli, run_args(image_folder, tiny_space, db, **{"n_trials": "1", "max_epochs": "1", **options}))

    study = optuna.load_study(study_name="s", storage=db)
    assert len(study.trials) == 1
    assert (study.user_attrs["tuner_config"]["n_trials"], study.user_attrs["tuner_config"]["model"]) == (1, "resnet18")
    if difference is None:
        assert second.exit_code == 0, second.output
        assert second.stdout.splitlines()[:2] == [
            "continuing study s (1 trial, metric val_accuracy)",
            "finished 1/1 trial (0 run by this process)",
        ]
        return
    assert second.exit_code == 1
    assert isinstance(second.exception, SystemExit)
    errors = [line for line in second.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith(CONFLICT)
    assert difference in errors[0]


def test_run_refuses_a_space_value_yaml_reads_as_text_before_creating_anything(runner, image_folder, tmp_path):
    # `1.0e30` has no exponent sign, so YAML reads it as the string '1.0e30'.
    space = tmp_path / "bad.yaml"
    space.write_text(HEAD_SPACE.replace("value: 1.0e-3", "value: 1.0e30"))
    db = f"sqlite:///{tmp_path / 'x.db'}"

    result = runner.invoke(cli, run_args(image_folder, space, db))

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == (
        "Error: bad.yaml: lr must be a number, got '1.0e30' (YAML reads a number like 1e-3 as text: write 1.0e-3)")
    assert optuna.get_all_study_names(storage=db) == []
