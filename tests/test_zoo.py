"""One model of every family trains one step head-only (on cached features) and fine-tuned (after a probe).

Each family's smallest member, --weights none, at the smallest input size tuner's input-size
probe accepts, on two digits images: one epoch of one step through tuner's Objective.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from tuner.search._objective import make_objective
from tuner.service._prepare import smallest_input_size
from tuner.space._space import parse_space
from tuner.training._data import DataConfig, ImageData, load_data
from tuner.training._models import ModelSpec, build_model
from tuner.training._settings import TrialSettings

ROOT = Path(__file__).resolve().parent.parent
# The smallest (fewest parameters, fastest to build) member of each family. vit/swin:
# swin_t takes 16 px inputs; every torchvision ViT takes only 224 px.
FAMILIES = {
    "resnet": "resnet18", "squeezenet": "squeezenet1_1", "mobilenet": "mobilenet_v3_small",
    "efficientnet": "efficientnet_b0", "convnext": "convnext_tiny", "regnet": "regnet_x_400mf",
    "shufflenet": "shufflenet_v2_x0_5", "mnasnet": "mnasnet0_5", "densenet": "densenet121",
    "googlenet": "googlenet", "alexnet": "alexnet", "swin": "swin_t",
}
SPACE = """\
params:
  freeze: {{type: fixed, value: {freeze}}}
  head_init: {{type: fixed, value: {head_init}}}
  optimizer: {{type: fixed, value: adamw}}
  lr: {{type: fixed, value: 1.0e-3}}
  batch_size: {{type: fixed, value: 2}}
  epochs: {{type: fixed, value: 1}}
"""


@pytest.fixture(scope="module")
def digits():
    """Two training and two validation images of digits at a given size: one batch of 2, one step."""
    made: dict[int, ImageData] = {}

    def at(size: int) -> ImageData:
        if size not in made:
            full = load_data(DataConfig("digits", size))
            made[size] = ImageData(full.train_images[:2], full.train_targets[:2], full.val_images[:2],
                                   full.val_targets[:2], full.classes, multilabel=False, skipped=0)
        return made[size]

    return at


def one_trial(model: str, size: int, data: ImageData, freeze: str, head_init: str, cache_dir: Path):
    space = parse_space(SPACE.format(freeze=freeze, head_init=head_init), source="zoo.yaml", name="zoo")
    settings = TrialSettings(model=model, weights="none", image_size=size, device="cpu", seed=0,
                             cache_dir=str(cache_dir))
    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(space, data, settings), n_trials=1)
    (trial,) = study.trials
    return trial


@pytest.mark.parametrize("model", FAMILIES.values(), ids=FAMILIES.keys())
def test_every_family_trains_a_step_head_only_and_fine_tuned(model, digits, tmp_path):
    size = smallest_input_size(build_model(ModelSpec(model, weights="none", num_classes=10)).model)
    assert size is not None
    head = one_trial(model, size, digits(size), "head", "random", tmp_path)
    assert head.state == optuna.trial.TrialState.COMPLETE
    assert head.user_attrs["feature_cache"] is True and len(head.user_attrs["history"]) == 1
    tuned = one_trial(model, size, digits(size), "full", "probe", tmp_path)
    assert tuned.state == optuna.trial.TrialState.COMPLETE
    assert "probe" in tuned.user_attrs and len(tuned.user_attrs["history"]) == 1


@pytest.mark.parametrize("model", FAMILIES.values(), ids=FAMILIES.keys())
def test_the_net_on_cached_features_computes_the_whole_model(model):
    """What head-only trials and the probe run on the head's input gives the model's own output."""
    built = build_model(ModelSpec(model, weights="none", num_classes=3))
    size = smallest_input_size(built.model)
    captured = []
    hook = built.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    built.model.eval()
    with torch.no_grad():
        whole = built.model(torch.rand(2, 3, size, size))
        hook.remove()
        on_features = built.on_features(captured[0])
    assert whole.shape == (2, 3)
    torch.testing.assert_close(on_features, whole)


REFUSING_MODEL = """\
from torch import nn


def refuses_all(pretrained):
    # A Linear on 5 inputs: no image size fits.
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 2))
"""


def test_the_zoo_bench_runs_and_reports_pass_and_refused(tmp_path):
    (tmp_path / "zoo_models.py").write_text(REFUSING_MODEL)
    table = tmp_path / "zoo.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "zoo.py"), "--models", "squeezenet1_1,zoo_models:refuses_all",
         "--strategies", "head,probe", "--out", str(table)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:3] for line in lines if line.startswith(("PASS", "REFUSED", "FAIL"))] == [
        ["PASS", "squeezenet1_1", "head"], ["PASS", "squeezenet1_1", "probe"],
        ["REFUSED", "zoo_models:refuses_all", "head"], ["REFUSED", "zoo_models:refuses_all", "probe"],
    ]
    assert any(line.startswith("SUMMARY: 2 PASS, 2 REFUSED, 0 FAIL") for line in lines)
    text = table.read_text()
    assert "| squeezenet1_1 | 24 | PASS | PASS |" in text
    assert ("| zoo_models:refuses_all | - | REFUSED | REFUSED | "
            "Error: zoo_models:refuses_all cannot take 16 px input") in text
