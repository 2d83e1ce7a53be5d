"""`--compile`: a real torch.compile'd trial completes, says so, matches the eager trial, and keeps plain keys.

Head-only on cached features, so only the small head (Dropout + Linear) compiles: compiling the
whole resnet18 takes minutes on 2 CPU cores. The full-model path wraps its network the same way.
"""

from __future__ import annotations

import sys

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import TrialState

from tuner.service._checkpoints import BEST_WEIGHTS_ATTR, ArtifactCheckpointer
from tuner.cli import cli
from tuner.training._data import load_data
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import DataWarning
from tuner.training._models import ModelSpec, build_model
from tuner.search._objective import make_objective
from tuner.training._settings import TrialSettings
from tuner.space._space import parse_space

# One epoch of head-only training with fixed hyperparameters: both trials train the same head.
HEAD_SPACE = """\
params:
  freeze: {type: fixed, value: head}
  lr: {type: fixed, value: 1.0e-3}
  optimizer: {type: fixed, value: adam}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: 1}
  patience: {type: fixed, value: 5}
"""


@pytest.fixture
def data(image_folder):
    # A few dozen images: the backbone's feature pass is cheap, so the test times the compile.
    with pytest.warns(DataWarning, match="skipped 1 unreadable file"):
        return load_data(DataConfig(str(image_folder), 16))


def one_trial(data, tmp_path, *, compile: bool) -> tuple[optuna.trial.FrozenTrial, dict]:
    """Run one trial; return it and the model weights of its last checkpoint."""
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", seed=5,
                             cache_views=1, cache_dir=str(tmp_path / "features"), compile=compile)
    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(tmp_path)), f"compile-{compile}")
    study = optuna.create_study(direction="maximize")
    space = parse_space(HEAD_SPACE, source="head.yaml", name="head")
    study.optimize(make_objective(space, data, settings, checkpointer=checkpointer), n_trials=1)
    (trial,) = study.trials
    return trial, checkpointer.load(trial)["model"]


def test_a_compiled_trial_completes_like_the_eager_one_with_plain_checkpoint_keys(data, tmp_path):
    eager, eager_weights = one_trial(data, tmp_path, compile=False)
    compiled, compiled_weights = one_trial(data, tmp_path, compile=True)

    assert (compiled.state, compiled.user_attrs["stop_reason"]) == (TrialState.COMPLETE, "completed")
    assert (compiled.user_attrs["compiled"], eager.user_attrs["compiled"]) == (True, False)
    # It really ran compiled (torch did not fall back at its recompile limit); an eager trial says nothing.
    assert compiled.user_attrs["compile_fell_back"] is False and "compile_fell_back" not in eager.user_attrs
    assert compiled.user_attrs["feature_cache"] is True
    # Same seed, same head init, same cached view: only float noise may differ.
    [eager_epoch], [compiled_epoch] = eager.user_attrs["history"], compiled.user_attrs["history"]
    assert compiled_epoch["val_loss"] == pytest.approx(eager_epoch["val_loss"], rel=1e-3)
    assert compiled.value == pytest.approx(eager.value, abs=0.01)
    # The checkpoint of the compiled trial loads into a plain, uncompiled model.
    assert not [key for key in compiled_weights if "_orig_mod" in key]
    assert compiled_weights.keys() == eager_weights.keys()
    plain = build_model(ModelSpec("resnet18", weights="none", num_classes=data.num_classes)).model
    plain.load_state_dict(compiled_weights)
    for key, value in eager_weights.items():
        torch.testing.assert_close(compiled_weights[key], value, rtol=1e-3, atol=1e-4)


def test_tuner_run_compile_reaches_the_trials_and_keeps_plain_best_weights(image_folder, tmp_path):
    space = tmp_path / "head.yaml"
    space.write_text(HEAD_SPACE)
    db, artifacts = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "artifacts"
    with pytest.warns(DataWarning, match="skipped 1 unreadable file"):
        result = CliRunner().invoke(cli, [
            "run", "--study", "s", "--data", str(image_folder), "--space", str(space), "--image-size", "16",
            "--weights", "none", "--n-trials", "1", "--device", "cpu", "--storage", db,
            "--artifacts", str(artifacts), "--compile", "--quiet",
        ])
    assert result.exit_code == 0, result.output
    (trial,) = optuna.load_study(study_name="s", storage=db).trials
    assert (trial.state, trial.user_attrs["compiled"]) == (TrialState.COMPLETE, True)
    kept = tmp_path / "best.pt"
    download_artifact(artifact_store=FileSystemArtifactStore(str(artifacts)),
                      artifact_id=trial.user_attrs[BEST_WEIGHTS_ATTR], file_path=str(kept))
    plain = build_model(ModelSpec("resnet18", weights="none", num_classes=2)).model
    plain.load_state_dict(torch.load(kept, weights_only=True)["model"])


@pytest.mark.parametrize("command", ["run", "worker"])
def test_compile_is_a_worker_option_of_run_and_worker(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--compile" in result.output and "torch.compile" in result.output


def test_compile_on_cpu_without_a_c_compiler_fails_before_any_trial(data, tmp_path, monkeypatch):
    from tuner.errors import DeviceError

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no cc, gcc or clang on it
    space = parse_space(HEAD_SPACE, source="head.yaml", name="head")
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", compile=True)
    with pytest.raises(DeviceError) as excinfo:
        make_objective(space, data, settings)
    assert str(excinfo.value) == ("--compile on CPU needs a C compiler (cc, gcc or clang) on PATH: "
                                  "install one (e.g. apt-get install gcc) or leave out --compile")


def test_compile_on_cuda_without_triton_fails_before_any_trial(monkeypatch):
    from tuner.errors import DeviceError
    from tuner.training._loop import check_compiler

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` fails, as where it is not installed
    with pytest.raises(DeviceError, match=r"^--compile on CUDA needs Triton, which does not import here \(.*\): "
                                          r"install the triton that matches this torch \(pip install triton\) "
                                          r"or leave out --compile$"):
        check_compiler(torch.device("cuda"))


def test_a_run_past_dynamo_s_recompile_limit_is_reported_as_fallen_back(monkeypatch):
    """What the trial's compile_fell_back attr reads: torch's own count of recompile-limit hits.
    (Dynamo's cheap eager backend and a limit of 1 here: inductor would take a minute.)"""
    from tuner.training._loop import RECOMPILE_LIMIT, compile_network, recompile_limit_hits

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    compile_network(torch.nn.Linear(2, 2))
    assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT  # raised for the process, and said so

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    before = recompile_limit_hits()
    net = torch.compile(torch.nn.Linear(2, 2), backend="eager", dynamic=False)
    with torch.no_grad():
        for rows in (1, 2, 3):  # a new shape each call: a recompile each, past the limit of 1
            net(torch.ones(rows, 2))
    assert recompile_limit_hits() > before
