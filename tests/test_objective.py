"""The Optuna objective on real in-memory studies: one trial is one real fine-tuning run.

Small and fast on purpose: resnet18 at 16 px on a few dozen images, 1-4 epochs.
"""

from __future__ import annotations

import csv
import textwrap

import numpy as np
import optuna
import pytest
import torch
import torchvision
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from tuner.service._checkpoints import ArtifactCheckpointer
from tuner.training._batches import eval_transform
from tuner.training._data import ImageData, load_data
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import DataWarning
from tuner.errors import SpaceError
from tuner.training._models import ModelSpec, build_model, count_trainable, weights_cache_path
from tuner.search._objective import TrialRun, make_objective
from tuner.training._settings import TrialSettings
from tuner.space._model import SearchSpace
from tuner.space._space import load_space, parse_space
from tuner.training._hyperparams import Hyperparams, check_space
from tuner.training._run import build_run

SETTINGS = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu")
HEAD_PARAMS = 512 * 2 + 2  # the new Linear(512, 2) of resnet18


def make_space(body: str) -> SearchSpace:
    """A space file from the lines under `params:`."""
    text = "params:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    return parse_space(text, source="t.yaml", name="t")


def run_study(space, data, *, params=None, settings=SETTINGS, pruner=None, n_trials=1, **kwargs) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner or optuna.pruners.NopPruner())
    if params is not None:
        study.enqueue_trial(params)
    study.optimize(make_objective(space, data, settings, **kwargs), n_trials=n_trials)
    return study


def only_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    (trial,) = study.trials
    return trial


def backbone_size(prefixes: tuple[str, ...]) -> int:
    """Scalar parameters of torchvision's own resnet18 under `prefixes` (independent of our code)."""
    model = torchvision.models.resnet18()
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def rescore(kept: dict, images) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation logits of weights a trial kept, from a freshly built model, and the targets."""
    model = build_model(ModelSpec("resnet18", weights="none", num_classes=images.num_classes)).model
    model.load_state_dict(kept["state"])
    model.eval()
    with torch.no_grad():
        logits = model(eval_transform(kept["meta"]["mean"], kept["meta"]["std"])(images.val_images))
    return logits, images.val_targets


@pytest.fixture
def data(image_folder):
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable file in .*: dark/corrupt\.png$"):
        return load_data(DataConfig(str(image_folder), 16))


@pytest.fixture
def manifest(tmp_path):
    """A multi-label CSV manifest: label a means a bright red channel, b a bright blue one."""
    folder = tmp_path / "multi"
    folder.mkdir()
    rows = []
    for index in range(30):
        labels = ("a", "b", "a;b")[index % 3]
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
        if "a" in labels:
            pixels[..., 0] += 180
        if "b" in labels:
            pixels[..., 2] += 180
        Image.fromarray(pixels, "RGB").save(folder / f"{index}.png")
        rows.append((f"{index}.png", labels))
    path = folder / "labels.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return path


@pytest.fixture
def multi_data(manifest):
    return load_data(DataConfig(str(manifest), 16))


# --- how a trial ends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freeze", "extra", "epochs", "trainable"),
    [
        ("head", {}, 3, HEAD_PARAMS),
        ("last_blocks", {"backbone_lr": 1e-4}, 2, backbone_size(("layer4.",)) + HEAD_PARAMS),
    ],
)
def test_a_completed_trial_records_its_run(tiny_space, data, freeze, extra, epochs, trainable):
    params = {"freeze": freeze, "optimizer": "adam", "lr": 5e-3, "batch_size": 64, "epochs": epochs, **extra}
    trial = only_trial(run_study(load_space(str(tiny_space)), data, params=params))

    assert trial.state == TrialState.COMPLETE
    assert trial.params == params
    attrs = trial.user_attrs
    assert attrs["stop_reason"] == "completed"
    assert attrs["epochs_run"] == epochs
    assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
    assert all(0 <= v <= 1 for v in trial.intermediate_values.values())
    # The value is the best epoch's metric; the first epoch reaching it is the best epoch.
    assert trial.value == max(trial.intermediate_values.values())
    best_epoch = min(e for e, v in trial.intermediate_values.items() if v == trial.value)
    assert attrs["best_epoch"] == best_epoch
    assert attrs["device"] == "cpu"
    assert attrs["trainable_params"] == trainable
    assert isinstance(attrs["train_seconds"], float) and attrs["train_seconds"] > 0
    assert [row["epoch"] for row in attrs["history"]] == list(range(1, epochs + 1))
    assert [row["metric"] for row in attrs["history"]] == [trial.intermediate_values[e] for e in range(1, epochs + 1)]
    assert attrs["fixed_params"] == {"loss": "cross_entropy", "patience": 5}
    assert attrs["lineage"] == 0


def test_the_value_is_the_best_epochs_metric_not_the_last(data):
    space = make_space("""\
        freeze: {type: fixed, value: head}
        optimizer: {type: fixed, value: sgd}
        lr: {type: fixed, value: 0.5}
        momentum: {type: fixed, value: 0.9}
        batch_size: {type: fixed, value: 64}
        epochs: {type: fixed, value: 2}
        """)
    # SGD this fast swings, and each trial number seeds differently: find a trial whose
    # second epoch scores worse than its first (head-only trials are cheap: the features are cached).
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    kept = {}
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", seed=16)
    objective = make_objective(space, data, settings, keep_best=lambda trial, value, state, meta: kept.update(
        {trial.number: {"value": value, "state": state, "meta": meta}}))
    for _ in range(40):
        study.optimize(objective, n_trials=1)
        trial = study.trials[-1]
        if trial.intermediate_values[2] < trial.intermediate_values[1]:
            break
    else:
        pytest.fail("no trial scored worse in epoch 2 than in epoch 1: make the lr faster")

    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["stop_reason"] == "completed"
    assert trial.value == trial.intermediate_values[1]
    assert trial.user_attrs["best_epoch"] == 1
    # The weights kept for the study are epoch 1's, not the last epoch's.
    logits, targets = rescore(kept[trial.number], data)
    assert kept[trial.number]["meta"]["best_epoch"] == 1
    assert accuracy_score(targets.numpy(), logits.argmax(1).numpy()) == pytest.approx(trial.value)


# lr so tiny that Adam cannot move a weight: epoch 2 ties epoch 1, and a tie is no improvement.
FROZEN_SPACE = """\
freeze: {type: fixed, value: head}
optimizer: {type: fixed, value: adam}
lr: {type: fixed, value: 1.0e-12}
patience: {type: fixed, value: 1}
epochs: {type: fixed, value: 4}
batch_size: {type: fixed, value: 64}
"""


def test_an_early_stopped_trial_is_complete_with_its_best_epoch_value(data):
    trial = only_trial(run_study(make_space(FROZEN_SPACE), data))

    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["stop_reason"] == "early_stopped"
    assert trial.user_attrs["epochs_run"] == 2 < 4
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.intermediate_values[1] == trial.intermediate_values[2]
    assert trial.user_attrs["best_epoch"] == 1
    assert trial.value == trial.intermediate_values[1]


@pytest.mark.parametrize(("warmup", "pruned_at"), [(0, 1), (2, 2)])
def test_a_pruned_trial_stops_at_the_pruners_step(data, warmup, pruned_at):
    space = make_space("epochs: {type: fixed, value: 3}\nbatch_size: {type: fixed, value: 64}\n")
    # No accuracy reaches 1.1: this real pruner prunes at the first step it may.
    pruner = optuna.pruners.ThresholdPruner(lower=1.1, n_warmup_steps=warmup)
    trial = only_trial(run_study(space, data, pruner=pruner))

    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["stop_reason"] == "pruned"
    assert trial.user_attrs["epochs_run"] == pruned_at
    assert sorted(trial.intermediate_values) == list(range(1, pruned_at + 1))


def test_a_pruned_trial_records_its_best_epochs_value_and_offers_its_best_weights(data):
    """Its best epoch can be the study's best (tuner.search.best_value_of): its value and weights are kept."""
    space = make_space("epochs: {type: fixed, value: 3}\nbatch_size: {type: fixed, value: 64}\n")
    kept = {}
    trial = only_trial(run_study(space, data, pruner=optuna.pruners.ThresholdPruner(lower=1.1, n_warmup_steps=2),
                                 keep_best=lambda trial, value, state, meta: kept.update(value=value, meta=meta)))

    assert (trial.state, trial.user_attrs["stop_reason"], trial.user_attrs["epochs_run"]) == (
        TrialState.PRUNED, "pruned", 2)
    metrics = {row["epoch"]: row["metric"] for row in trial.user_attrs["history"]}
    assert trial.user_attrs["best_value"] == max(metrics.values()) == metrics[trial.user_attrs["best_epoch"]]
    assert kept["value"] == trial.user_attrs["best_value"]
    assert kept["meta"]["best_epoch"] == trial.user_attrs["best_epoch"]


@pytest.mark.parametrize(
    ("epochs", "batch_size"),
    [
        (3, 16),  # two batches an epoch: the second batch's loss is NaN
        (3, 64),  # one batch an epoch: the weights are NaN after the epoch's only step
        (1, 64),  # ... and it is the trial's last step
    ],
)
def test_a_diverged_trial_is_pruned_and_reports_nothing_from_broken_weights(data, epochs, batch_size):
    space = make_space(f"""\
        freeze: {{type: fixed, value: full}}
        optimizer: {{type: fixed, value: sgd}}
        lr: {{type: fixed, value: 1.0e+30}}
        epochs: {{type: fixed, value: {epochs}}}
        batch_size: {{type: fixed, value: {batch_size}}}
        """)
    assert space.params["lr"][0].value == 1e30  # the space validator accepts a huge learning rate
    trial = only_trial(run_study(space, data))

    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["stop_reason"] == "diverged"
    assert trial.user_attrs["epochs_run"] == 0
    assert trial.intermediate_values == {}
    assert trial.value is None


# --- reproducibility -------------------------------------------------------------------------

REPRO_SPACE = """\
freeze: {type: categorical, choices: [head, last_blocks]}
lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
dropout: {type: float, low: 0.0, high: 0.5}
aug_hflip: {type: categorical, choices: [0.0, 0.5]}
aug_crop_scale: {type: float, low: 0.5, high: 1.0}
aug_color_jitter: {type: float, low: 0.0, high: 0.4}
batch_size: {type: categorical, choices: [8, 16]}
epochs: {type: fixed, value: 2}
"""
# Shuffling, dropout and every augmentation draw random numbers.
REPRO_PARAMS = {
    "freeze": "head", "lr": 0.01, "dropout": 0.3,
    "aug_hflip": 0.5, "aug_crop_scale": 0.6, "aug_color_jitter": 0.2, "batch_size": 16,
}


def test_the_same_params_and_seed_give_the_same_run(data):
    space = make_space(REPRO_SPACE)
    in_study = only_trial(run_study(space, data, params=REPRO_PARAMS))
    fixed = optuna.trial.FixedTrial(REPRO_PARAMS, number=0)
    value = make_objective(space, data, SETTINGS)(fixed)
    other_seed = only_trial(run_study(space, data, params=REPRO_PARAMS, settings=TrialSettings(
        model="resnet18", weights="none", image_size=16, device="cpu", seed=1)))

    assert in_study.state == TrialState.COMPLETE
    assert value == in_study.value
    assert fixed.user_attrs["history"] == in_study.user_attrs["history"]  # every loss, bit for bit
    # ... and the comparison can tell runs apart: another study seed trains differently.
    train_losses = [row["train_loss"] for row in in_study.user_attrs["history"]]
    assert [row["train_loss"] for row in other_seed.user_attrs["history"]] != train_losses


# --- multi-label data ------------------------------------------------------------------------


def test_a_multi_label_manifest_trains_with_bce_and_scores_macro_f1(tiny_space, multi_data):
    assert multi_data.multilabel and multi_data.classes == ("a", "b")
    kept = {}

    def keep_best(trial, value, state_dict, meta):
        kept.update(value=value, state=state_dict, meta=meta)

    params = {"freeze": "head", "optimizer": "adam", "lr": 1e-2, "batch_size": 64, "epochs": 2}
    study = run_study(load_space(str(tiny_space)), multi_data, params=params, keep_best=keep_best)
    trial = only_trial(study)

    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["fixed_params"]["loss"] == "bce_with_logits"  # chosen by `when: {task: ...}`
    assert 0 <= study.best_value <= 1
    assert all(0 <= v <= 1 for v in trial.intermediate_values.values())
    assert kept["value"] == trial.value and kept["meta"]["multilabel"] is True

    # The value is macro F1 at probability 0.5 of the best epoch's weights, as scikit-learn computes it.
    logits, targets = rescore(kept, multi_data)
    expected = f1_score(targets.numpy(), (logits > 0).numpy(), average="macro", zero_division=1.0)
    assert trial.value == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("data_fixture", "loss", "message"),
    [
        ("data", "bce_with_logits",
         "t.yaml: loss 'bce_with_logits' does not fit single_label data, which trains with cross_entropy "
         "(choose loss with `when: {task: ...}`)"),
        ("multi_data", "cross_entropy",
         "t.yaml: loss 'cross_entropy' does not fit multi_label data, which trains with bce_with_logits "
         "(choose loss with `when: {task: ...}`)"),
    ],
)
def test_a_loss_that_contradicts_the_data_is_an_error_not_ignored(request, data_fixture, loss, message):
    images = request.getfixturevalue(data_fixture)
    space = make_space(f"loss: {{type: fixed, value: {loss}}}\n")
    study = optuna.create_study(direction="maximize")
    with pytest.raises(SpaceError) as excinfo:
        study.optimize(make_objective(space, images, SETTINGS), n_trials=1)
    assert str(excinfo.value) == message
    assert only_trial(study).state == TrialState.FAIL


# --- wiring of the sampled hyperparameters ---------------------------------------------------


@pytest.fixture
def presplit(tmp_path):
    """train/ holds 6 dark and 2 bright images, val/ 2 of each: the class balance differs."""
    root = tmp_path / "presplit"
    for split, counts in (("train", {"dark": 6, "bright": 2}), ("val", {"dark": 2, "bright": 2})):
        for label, count in counts.items():
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                shade = 40 + index if label == "dark" else 200 + index
                Image.new("RGB", (12, 12), (shade, shade, shade)).save(root / split / label / f"{index}.png")
    return load_data(DataConfig(str(root), 16))


def test_sampled_hyperparameters_reach_the_run(presplit):
    hp = Hyperparams.from_params({
        "freeze": "last_blocks", "lr": 0.02, "backbone_lr": 2e-4, "optimizer": "sgd", "momentum": 0.8,
        "nesterov": True, "weight_decay": 3e-5, "batch_size": 4, "class_weighting": "balanced",
        "label_smoothing": 0.1, "patience": 2, "dropout": 0.3,
    })
    run = build_run(make_objective(make_space(FROZEN_SPACE), presplit, SETTINGS).run_inputs(), hp, seed=0)

    assert type(run.state.optimizer) is torch.optim.SGD
    groups = {g["name"]: g for g in run.state.optimizer.param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == {"head": 0.02, "backbone": 2e-4}
    assert all((g["momentum"], g["nesterov"], g["weight_decay"]) == (0.8, True, 3e-5) for g in groups.values())
    assert count_trainable(run.model) == backbone_size(("layer4.",)) + HEAD_PARAMS
    assert run.built.head[0].p == 0.3
    assert type(run.loss_fn) is nn.CrossEntropyLoss and run.loss_fn.label_smoothing == 0.1
    # Balanced weights come from the training targets only (classes: bright 2, dark 6 of 8).
    assert presplit.classes == ("bright", "dark")
    assert run.loss_fn.weight.tolist() == pytest.approx([8 / (2 * 2), 8 / (2 * 6)])
    assert (run.train_loader.batches.batch_size, run.train_loader.batches.drop_last) == (4, True)
    assert run.val_loader.batches.batch_size == 4 and len(run.val_loader.batches.tensors[0]) == 4
    assert run.state.stopper.patience == 2


def test_multi_label_balanced_weighting_sets_bce_pos_weight():
    images = torch.zeros(6, 3, 16, 16, dtype=torch.uint8)
    # Train rows: label a on 3 of 4 (1 negative), label b on 1 of 4 (3 negatives).
    train = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    data = ImageData(images[:4], train, images[4:], torch.tensor([[1.0, 1.0], [0.0, 1.0]]), ("a", "b"), True, 0)
    hp = Hyperparams.from_params({"loss": "bce_with_logits", "class_weighting": "balanced"})
    run = build_run(make_objective(make_space(FROZEN_SPACE), data, SETTINGS).run_inputs(), hp, seed=0)
    assert type(run.loss_fn) is nn.BCEWithLogitsLoss
    # negatives / positives per label, from the training rows only
    assert run.loss_fn.pos_weight.tolist() == pytest.approx([1 / 3, 3 / 1])


@pytest.mark.parametrize(
    ("schedule", "factor"),
    [
        pytest.param({"scheduler": "none"}, 1.0, id="none"),
        pytest.param({"scheduler": "step", "step_size": 2, "step_gamma": 0.5}, 0.5, id="step"),
        pytest.param({"scheduler": "cosine", "cosine_min_lr_ratio": 0.2}, 0.2, id="cosine"),
        # A constant metric: epoch 1 sets the best, epoch 2 is tolerated, epoch 3 reduces.
        pytest.param({"scheduler": "plateau", "plateau_factor": 0.1, "plateau_patience": 1}, 0.1, id="plateau"),
    ],
)
def test_the_schedule_steps_once_per_epoch_on_the_validation_metric(data, schedule, factor):
    # lr 1e-6: small enough to keep the metric constant, big enough for ReduceLROnPlateau,
    # which ignores reductions smaller than its eps of 1e-8.
    hp = Hyperparams.from_params({"freeze": "head", "optimizer": "adam", "lr": 1e-6, "epochs": 3,
                                  "batch_size": 64, "patience": 10, **schedule})
    objective = make_objective(make_space(FROZEN_SPACE), data, SETTINGS)
    run = TrialRun(objective, build_run(objective.run_inputs(), hp, seed=0), origin=0)
    trial = optuna.trial.FixedTrial({})
    run.execute(trial)
    assert trial.user_attrs["epochs_run"] == 3
    assert len({row["metric"] for row in trial.user_attrs["history"]}) == 1
    assert run.training.state.optimizer.param_groups[0]["lr"] == pytest.approx(1e-6 * factor)


# --- weights, space checks and resuming -----------------------------------------------------


def test_imagenet_weights_load_offline_from_the_hub_cache(data, offline_hub):
    torch.manual_seed(3)
    saved = torchvision.models.resnet18().state_dict()
    path = weights_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    kept = {}
    settings = TrialSettings(model="resnet18", weights="imagenet", image_size=16, device="cpu")
    space = make_space("freeze: {type: fixed, value: head}\nepochs: {type: fixed, value: 1}\n"
                       "batch_size: {type: fixed, value: 64}\n")

    trial = only_trial(run_study(space, data, settings=settings,
                                 keep_best=lambda trial, value, state, meta: kept.update(state)))

    assert trial.state == TrialState.COMPLETE
    # The frozen backbone (BatchNorms in eval) still holds exactly the cached weights.
    backbone = [k for k in saved if not k.startswith("fc.")]
    assert backbone and all(torch.equal(kept[k], saved[k]) for k in backbone)
    assert kept["fc.1.weight"].shape == (2, 512)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("lr: {type: fixed, value: 1.0e+30}", None),
        ("backbone_lr: {type: fixed, value: null}", None),
        ("aug_rotation: {type: int, low: 0, high: 30, step: 5}", None),  # an int for a float field
        ("lr: {type: fixed, value: 1.0e30}",
         "t.yaml: lr must be a number, got '1.0e30' (YAML reads a number like 1e-3 as text: write 1.0e-3)"),
        ("momentum: {type: categorical, choices: [0.9, 1e-1]}",
         "t.yaml: momentum must be a number, got '1e-1' (YAML reads a number like 1e-3 as text: write 1.0e-3)"),
        ("epochs: {type: float, low: 2, high: 3}", "t.yaml: epochs must be an integer, got 3.0"),
        ("freeze: {type: categorical, choices: [head, partial]}",
         "t.yaml: freeze must be one of head, last_blocks, full, gradual, got 'partial'"),
        ("nesterov: {type: categorical, choices: [false, 'yes']}", "t.yaml: nesterov must be true or false, got 'yes'"),
        ("batch_size: {type: categorical, choices: [16, 0]}", "t.yaml: batch_size must be > 0, got 0"),
        ("lr: {type: float, low: -1.0, high: 0.0}", "t.yaml: lr must be > 0, got 0.0"),
    ],
)
def test_space_values_the_trainer_cannot_use_fail_before_any_trial(data, body, message):
    space = make_space(body + "\n")
    if message is None:
        check_space(space)
        return
    with pytest.raises(SpaceError) as excinfo:
        make_objective(space, data, SETTINGS)
    assert str(excinfo.value) == message


@pytest.mark.parametrize("name", ["default", "feature_extraction", "fine_tuning"])
def test_shipped_spaces_pass_the_trainer_checks(name):
    space = load_space(name)
    check_space(space)  # raises SpaceError on a parameter the trainer cannot use
    # And what they sample, for either task, is a run the trainer accepts as it stands.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for index in range(20):
        context = {"task": ("single_label", "multi_label")[index % 2]}
        params = space.sample(study.ask(), context)
        hp = Hyperparams.from_params(params)
        assert {k: getattr(hp, k) for k in params} == params
        assert hp.loss in (None, "bce_with_logits" if context["task"] == "multi_label" else "cross_entropy")


class Interrupted(Exception):
    """Stands for the worker's hand-back (or a kill) right after an epoch's checkpoint."""


@pytest.mark.parametrize(
    ("body", "pruner", "state", "reason"),
    [
        pytest.param(FROZEN_SPACE, None, TrialState.COMPLETE, "early_stopped", id="early-stopped-at-2"),
        pytest.param(FROZEN_SPACE.replace("patience: {type: fixed, value: 1}", "patience: {type: fixed, value: 9}"),
                     optuna.pruners.ThresholdPruner(lower=1.1, n_warmup_steps=2), TrialState.PRUNED, "pruned",
                     id="pruned-at-2"),
    ],
)
def test_a_trial_handed_back_at_its_stopping_epoch_stops_there_when_resumed(tmp_path, data, body, pruner,
                                                                            state, reason):
    space = make_space(body)
    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(tmp_path)), "s")

    def hand_back(trial, epoch, epochs, metric):
        if epoch == 2:
            raise Interrupted

    study = optuna.create_study(direction="maximize", pruner=pruner or optuna.pruners.NopPruner())
    study.optimize(make_objective(space, data, SETTINGS, checkpointer=checkpointer, on_epoch=hand_back),
                   n_trials=1, catch=(Interrupted,))
    first = only_trial(study)
    assert (first.state, first.user_attrs["stop_reason"], first.user_attrs["epochs_run"]) == (
        TrialState.FAIL, "interrupted", 2)
    # Back in the queue with its user attrs (checkpoint, lineage), as the worker requeues it.
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=first.params,
                                              distributions=first.distributions, user_attrs=first.user_attrs))
    study.optimize(make_objective(space, data, SETTINGS, checkpointer=checkpointer), n_trials=1)
    resumed = study.trials[1]

    assert resumed.user_attrs["resumed_from_epoch"] == 2
    # An uninterrupted run ends at epoch 2: so does the resumed one, without training on.
    assert (resumed.state, resumed.user_attrs["stop_reason"], resumed.user_attrs["epochs_run"]) == (state, reason, 2)
    assert resumed.intermediate_values == first.intermediate_values
    assert sorted(resumed.intermediate_values) == [1, 2]
