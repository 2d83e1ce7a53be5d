"""Tests of tuner.training._loop: hyperparameters, freezing with differential LRs, optimizers,
LR schedules, losses, metrics, one training epoch, evaluation and early stopping."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from tuner.errors import TunerError
from tuner.training._models import ModelSpec, build_model, freeze, set_train_mode
from tuner.training._loop import (
    Diverged,
    EarlyStopping,
    Evaluation,
    Hyperparams,
    Runtime,
    accuracy,
    class_weights,
    evaluate,
    macro_f1,
    make_loss,
    make_optimizer,
    make_scheduler,
    step_scheduler,
    train_one_epoch,
)

CPU = Runtime(torch.device("cpu"))
ALL_NAMES = (
    "freeze, unfreeze_blocks, unfreeze_every, head_init, lr, backbone_lr, optimizer, momentum, nesterov, weight_decay, batch_size, "
    "epochs, scheduler, step_size, step_gamma, plateau_factor, plateau_patience, cosine_min_lr_ratio, "
    "dropout, aug_crop_scale, aug_hflip, aug_rotation, aug_color_jitter, loss, label_smoothing, "
    "class_weighting, patience"
)


def _resnet(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelSpec("resnet18", weights="none", num_classes=2))


def _two_groups(head_lr: float = 0.1, backbone_lr: float = 0.01, **hp) -> torch.optim.Optimizer:
    """An optimizer with a head and a backbone group over two small layers."""
    hyper = Hyperparams(lr=head_lr, backbone_lr=backbone_lr, **hp)
    return make_optimizer(hyper, list(nn.Linear(3, 3).parameters()), list(nn.Linear(3, 2).parameters()))


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


# --- Hyperparams -----------------------------------------------------------------------------


def test_defaults_fill_in_what_the_space_omits():
    hp = Hyperparams.from_params({"lr": 0.02, "freeze": "full"})
    assert hp == Hyperparams(lr=0.02, freeze="full")
    assert (hp.optimizer, hp.epochs, hp.patience, hp.scheduler, hp.backbone_lr) == ("adamw", 10, 5, "none", None)


@pytest.mark.parametrize(
    ("params", "max_epochs", "epochs"),
    [
        ({"epochs": 20}, 3, 3),
        ({"epochs": 2}, 3, 2),
        ({}, 4, 4),  # the default of 10 is capped too
        ({"epochs": 20}, None, 20),
    ],
)
def test_max_epochs_caps_the_epochs(params, max_epochs, epochs):
    assert Hyperparams.from_params(params, max_epochs=max_epochs).epochs == epochs


def test_unknown_hyperparameter_is_named():
    with pytest.raises(TunerError) as excinfo:
        Hyperparams.from_params({"learning_rate": 0.1, "lr": 0.1})
    assert str(excinfo.value) == f"unknown hyperparameter 'learning_rate'; the trainer understands: {ALL_NAMES}"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"freeze": "partial"}, "freeze must be one of head, last_blocks, full, gradual, got 'partial'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adamw, sgd, got 'rmsprop'"),
        ({"scheduler": "exponential"}, "scheduler must be one of none, step, plateau, cosine, got 'exponential'"),
        ({"loss": "focal"}, "loss must be one of cross_entropy, bce_with_logits, got 'focal'"),
        ({"class_weighting": "inverse"}, "class_weighting must be one of none, balanced, got 'inverse'"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"backbone_lr": 0.0}, "backbone_lr must be > 0, got 0.0"),
        ({"batch_size": -1}, "batch_size must be > 0, got -1"),
        ({"epochs": 0}, "epochs must be > 0, got 0"),
        ({"patience": 0}, "patience must be > 0, got 0"),
        # YAML reads 1e-3 (no dot) and 1.0e30 (no exponent sign) as text.
        ({"lr": "1e-3"}, "lr must be a number, got '1e-3' (YAML reads a number like 1e-3 as text: write 1.0e-3)"),
        ({"lr": "1.0e30"}, "lr must be a number, got '1.0e30' (YAML reads a number like 1e-3 as text: write 1.0e-3)"),
        ({"momentum": "high"}, "momentum must be a number, got 'high'"),
        ({"momentum": True}, "momentum must be a number, got True"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer, got True"),
        ({"nesterov": "yes"}, "nesterov must be true or false, got 'yes'"),
        ({"nesterov": 1}, "nesterov must be true or false, got 1"),
        ({"head_init": "linear"}, "head_init must be one of random, probe, got 'linear'"),
        ({"unfreeze_every": 0}, "unfreeze_every must be > 0, got 0"),
        ({"unfreeze_every": 1.5}, "unfreeze_every must be an integer, got 1.5"),
    ],
)
def test_bad_hyperparameters_are_rejected_with_their_name(params, message):
    with pytest.raises(TunerError) as excinfo:
        Hyperparams.from_params(params, max_epochs=3)
    assert str(excinfo.value) == message


def test_float_fields_take_ints_and_backbone_lr_takes_none():
    # An `int` range (aug_rotation in the default space) feeds a float field.
    hp = Hyperparams.from_params({"lr": 1, "aug_rotation": 15, "backbone_lr": None})
    assert (hp.lr, hp.aug_rotation, hp.backbone_lr) == (1, 15, None)


# --- freezing and differential learning rates ----------------------------------------------

FREEZE_CASES = [
    # strategy, backbone_lr, trainable name prefixes, optimizer groups {name: lr}
    ("head", None, ("fc.",), {"head": 0.01}),
    ("head", 1e-4, ("fc.",), {"head": 0.01}),  # no trainable backbone, so no backbone group
    ("last_blocks", 1e-4, ("layer4.", "fc."), {"head": 0.01, "backbone": 1e-4}),
    ("last_blocks", None, ("layer4.", "fc."), {"head": 0.01, "backbone": 0.01}),
    ("full", 1e-5, ("",), {"head": 0.01, "backbone": 1e-5}),
]


@pytest.mark.parametrize(("strategy", "backbone_lr", "prefixes", "groups"), FREEZE_CASES)
def test_freeze_strategy_and_parameter_groups(strategy, backbone_lr, prefixes, groups):
    built = _resnet()
    backbone, head = freeze(built, strategy, 1)
    optimizer = make_optimizer(Hyperparams(freeze=strategy, lr=0.01, backbone_lr=backbone_lr), backbone, head)

    names = {id(p): n for n, p in built.model.named_parameters()}
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names.values() if n.startswith(prefixes)}
    assert _lrs(optimizer) == groups
    by_group = {g["name"]: [names[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    assert by_group["head"] == ["fc.1.weight", "fc.1.bias"]
    assert sorted(by_group.get("backbone", [])) == sorted(trainable - {"fc.1.weight", "fc.1.bias"})


@pytest.mark.parametrize("strategy", ["head", "last_blocks", "full"])
def test_a_training_epoch_changes_exactly_the_trainable_parameters(strategy):
    built = _resnet()
    model = built.model
    backbone, head = freeze(built, strategy, 1)
    optimizer = make_optimizer(Hyperparams(optimizer="sgd", lr=0.1, backbone_lr=0.05), backbone, head)
    torch.manual_seed(1)
    images, targets = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    set_train_mode(model)
    loss = train_one_epoch(model, DataLoader(TensorDataset(images, targets), batch_size=4),
                           nn.CrossEntropyLoss(), optimizer, CPU)

    assert math.isfinite(loss)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {n for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed & params == trainable
    # Frozen BatchNorms stay in eval: only trainable ones update their running statistics.
    prefixes = {"head": ("fc.",), "last_blocks": ("layer4.", "fc."), "full": ("",)}[strategy]
    assert changed - params == {k for k in before if k not in params and k.startswith(prefixes)}


# --- optimizers ------------------------------------------------------------------------------

OPTIMIZER_CASES = [
    ({"optimizer": "adam", "weight_decay": 1e-5}, torch.optim.Adam, {"weight_decay": 1e-5}),
    ({"optimizer": "adamw", "weight_decay": 1e-2}, torch.optim.AdamW, {"weight_decay": 1e-2}),
    (
        {"optimizer": "sgd", "momentum": 0.85, "nesterov": True, "weight_decay": 3e-5},
        torch.optim.SGD,
        {"momentum": 0.85, "nesterov": True, "weight_decay": 3e-5},
    ),
    (
        {"optimizer": "sgd", "momentum": 0.95, "nesterov": False, "weight_decay": 0.0},
        torch.optim.SGD,
        {"momentum": 0.95, "nesterov": False, "weight_decay": 0.0},
    ),
]


@pytest.mark.parametrize(("params", "cls", "settings"), OPTIMIZER_CASES)
def test_optimizer_class_and_sampled_settings(params, cls, settings):
    optimizer = _two_groups(head_lr=0.1, backbone_lr=0.01, **params)
    assert type(optimizer) is cls
    assert _lrs(optimizer) == {"head": 0.1, "backbone": 0.01}
    for group in optimizer.param_groups:
        assert {k: group[k] for k in settings} == settings
    if cls is not torch.optim.SGD:  # AdamW decouples weight decay from the gradient; Adam adds it to it
        assert optimizer.defaults["decoupled_weight_decay"] == (cls is torch.optim.AdamW)


# --- LR schedules ----------------------------------------------------------------------------


def _run_schedule(optimizer, scheduler, metrics) -> list[dict[str, float]]:
    seen = []
    for metric in metrics:
        optimizer.step()  # as in training: the epoch's steps come before its schedule step
        step_scheduler(scheduler, metric)
        seen.append(_lrs(optimizer))
    return seen


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs():
    optimizer = _two_groups(0.1, 0.01)
    scheduler = make_scheduler(Hyperparams(scheduler="step", step_size=2, step_gamma=0.5), optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    seen = _run_schedule(optimizer, scheduler, [0.5] * 5)
    factors = [1, 0.5, 0.5, 0.25, 0.25]  # after epochs 1..5
    assert seen == [pytest.approx({"head": 0.1 * f, "backbone": 0.01 * f}) for f in factors]


@pytest.mark.parametrize(
    ("metrics", "factors"),
    [
        # Rising metrics are improvements in mode max: never reduced.
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 1, 1, 1, 1]),
        # Best at epoch 2; epochs 3 and 4 are the 2 tolerated ones, epoch 5 reduces the LR.
        ([0.5, 0.6, 0.6, 0.55, 0.6, 0.6, 0.6, 0.6], [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01]),
        # A real improvement resets the count.
        ([0.5, 0.4, 0.4, 0.7, 0.6, 0.6], [1, 1, 1, 1, 1, 1]),
    ],
)
def test_plateau_schedule_is_stepped_with_the_maximised_metric(metrics, factors):
    optimizer = _two_groups(0.1, 0.01)
    hp = Hyperparams(scheduler="plateau", plateau_factor=0.1, plateau_patience=2)
    scheduler = make_scheduler(hp, optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.mode == "max"
    seen = _run_schedule(optimizer, scheduler, metrics)
    assert seen == [pytest.approx({"head": 0.1 * f, "backbone": 0.01 * f}) for f in factors]


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_schedule_ends_at_the_min_ratio_of_each_group(min_ratio):
    epochs = 4
    optimizer = _two_groups(0.1, 0.001)
    scheduler = make_scheduler(Hyperparams(scheduler="cosine", epochs=epochs, cosine_min_lr_ratio=min_ratio), optimizer)
    assert _lrs(optimizer) == pytest.approx({"head": 0.1, "backbone": 0.001})  # the first epoch's LR
    seen = _run_schedule(optimizer, scheduler, [0.5] * (epochs + 1))
    for step, lrs in enumerate(seen, start=1):
        factor = min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * min(step, epochs) / epochs)) / 2
        assert lrs == pytest.approx({"head": 0.1 * factor, "backbone": 0.001 * factor}, abs=1e-12)
    # After the last epoch each group is at min_ratio of its own LR, and stays there.
    assert seen[epochs - 1] == pytest.approx({"head": 0.1 * min_ratio, "backbone": 0.001 * min_ratio}, abs=1e-12)
    assert seen[epochs] == seen[epochs - 1]


def test_no_schedule_keeps_the_learning_rates():
    optimizer = _two_groups(0.1, 0.01)
    scheduler = make_scheduler(Hyperparams(scheduler="none"), optimizer)
    assert scheduler is None
    assert _run_schedule(optimizer, scheduler, [0.5, 0.1, 0.1]) == [{"head": 0.1, "backbone": 0.01}] * 3


# --- losses ----------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -2.0, 0.5]])
TARGETS = torch.tensor([0, 2, 2, 1])


def _smoothed_ce(logits, targets, smoothing, weight=None):
    """Cross-entropy with label smoothing and class weights, written out (PyTorch's definition)."""
    classes = logits.shape[1]
    weight = torch.ones(classes) if weight is None else weight
    log_p = logits.log_softmax(1)
    nll = -log_p[torch.arange(len(targets)), targets]
    smooth = -(log_p * weight).sum(1) / classes
    return ((1 - smoothing) * (weight[targets] * nll).sum() + smoothing * smooth.sum()) / weight[targets].sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.2])
def test_cross_entropy_with_label_smoothing(smoothing):
    loss = make_loss(Hyperparams(label_smoothing=smoothing), TARGETS, 3, False, "cpu")
    assert type(loss) is nn.CrossEntropyLoss
    assert loss.weight is None and loss.label_smoothing == smoothing
    assert loss(LOGITS, TARGETS).item() == pytest.approx(_smoothed_ce(LOGITS, TARGETS, smoothing).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("train_targets", "classes", "weights"),
    [
        ([0, 0, 0, 1, 1, 2], 3, [6 / 9, 1.0, 2.0]),  # n / (classes * count)
        ([0, 0, 0, 1, 1, 2], 4, [0.5, 0.75, 1.5, 1.5]),  # an absent class counts as 1
        ([1, 0, 1, 0], 2, [1.0, 1.0]),
    ],
)
def test_balanced_class_weights_are_inverse_frequencies(train_targets, classes, weights):
    targets = torch.tensor(train_targets)
    assert class_weights(targets, classes, False).tolist() == pytest.approx(weights)
    loss = make_loss(Hyperparams(class_weighting="balanced", label_smoothing=0.1), targets, classes, False, "cpu")
    assert loss.weight.tolist() == pytest.approx(weights)
    logits, target = torch.cat([LOGITS, LOGITS[:, :1]], 1)[:, :classes], TARGETS % classes
    expected = _smoothed_ce(logits, target, 0.1, torch.tensor(weights))
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("loss", "multilabel", "expected"), [
    (None, False, nn.CrossEntropyLoss), (None, True, nn.BCEWithLogitsLoss),
    ("cross_entropy", False, nn.CrossEntropyLoss), ("bce_with_logits", True, nn.BCEWithLogitsLoss),
])
def test_the_loss_is_the_one_the_data_trains_with(loss, multilabel, expected):
    targets = torch.ones(4, 3) if multilabel else TARGETS
    assert type(make_loss(Hyperparams(loss=loss), targets, 3, multilabel, "cpu")) is expected


@pytest.mark.parametrize(("loss", "multilabel", "message"), [
    ("bce_with_logits", False, "loss 'bce_with_logits' does not fit single-label data, which trains with cross_entropy"),
    ("cross_entropy", True, "loss 'cross_entropy' does not fit multi-label data, which trains with bce_with_logits"),
])
def test_a_loss_that_contradicts_the_data_is_refused(loss, multilabel, message):
    with pytest.raises(TunerError) as excinfo:
        make_loss(Hyperparams(loss=loss), torch.ones(4, 3) if multilabel else TARGETS, 3, multilabel, "cpu")
    assert str(excinfo.value) == message


def test_no_class_weighting_means_no_weights():
    assert make_loss(Hyperparams(class_weighting="none"), TARGETS, 3, False, "cpu").weight is None
    assert make_loss(Hyperparams(class_weighting="none"), torch.ones(4, 2), 2, True, "cpu").pos_weight is None


MULTI_TARGETS = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("weighting", "pos_weight"),
    [
        # negatives / positives per label; a label that is always positive counts 1 negative,
        # one that is never positive counts 1 positive (its weight then multiplies nothing).
        ("balanced", [1 / 3, 3.0, 1 / 4, 3.0]),
        ("none", None),
    ],
)
def test_multi_label_uses_bce_with_logits(weighting, pos_weight):
    loss = make_loss(Hyperparams(class_weighting=weighting, loss="bce_with_logits"), MULTI_TARGETS, 4, True, "cpu")
    assert type(loss) is nn.BCEWithLogitsLoss
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [0.0, 1.0, 2.0, 1.0], [1.0, 0.0, -1.0, 0.0], [-1.0, 2.0, 1.0, -2.0]])
    weight = torch.ones(4) if pos_weight is None else torch.tensor(pos_weight)
    if pos_weight is None:
        assert loss.pos_weight is None
    else:
        assert loss.pos_weight.tolist() == pytest.approx(pos_weight)
    y = MULTI_TARGETS
    expected = -(weight * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()
    assert loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


# --- metrics ---------------------------------------------------------------------------------


def test_accuracy_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1, 1])) == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("logits", "truth", "expected"),
    [
        # label 0: tp 1, fp 1, fn 1 -> 0.5; label 1: tp 2 -> 1; label 2 absent and never predicted -> 1
        (
            [[3, -1, -2], [1, 2, -1], [-1, 1, -3], [-2, -1, -1]],
            [[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]],
            (0.5 + 1 + 1) / 3,
        ),
        # label 1 absent but predicted -> 0
        ([[1, 1], [1, -1]], [[1, 0], [1, 0]], (1 + 0) / 2),
        # a logit of exactly 0 is probability 0.5: not predicted (label 0: tp 1, fn 1 -> 2/3)
        ([[0.0, -1], [1, -1]], [[1, 0], [1, 0]], (2 / 3 + 1) / 2),
        # every decision wrong
        ([[1, -1], [-1, 1]], [[0, 1], [1, 0]], 0.0),
    ],
)
def test_macro_f1_on_hand_made_logits(logits, truth, expected):
    value = macro_f1(torch.tensor(logits, dtype=torch.float32), torch.tensor(truth, dtype=torch.float32))
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("multilabel", "targets", "loss_fn", "metric"),
    [
        # argmax [0, 1, 2, 0] against [0, 2, 2, 1]: accuracy 2/4
        (False, TARGETS, nn.CrossEntropyLoss(), 0.5),
        # predicted (logit > 0) [[1,0,0],[1,1,0],[0,0,1],[1,0,1]]: label 0 tp 2, fp 1 -> 0.8;
        # labels 1 and 2 exact -> 1
        (True, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]]), nn.BCEWithLogitsLoss(), (0.8 + 1 + 1) / 3),
    ],
)
def test_evaluate_scores_the_whole_validation_set(multilabel, targets, loss_fn, metric):
    # The "images" are the logits themselves, so metric and loss are known exactly.
    model = nn.Sequential(nn.Dropout(0.5), nn.Identity())
    model.train()
    # Batches of 3 and 1: the loss is the mean over samples, not over batches.
    loader = DataLoader(TensorDataset(LOGITS, targets), batch_size=3)
    result = evaluate(model, loader, loss_fn, CPU, multilabel)
    assert isinstance(result, Evaluation)
    assert not model.training  # dropout is off while scoring
    assert result.metric == pytest.approx(metric)
    assert result.loss == pytest.approx(loss_fn(LOGITS, targets).item())


def test_train_one_epoch_returns_the_sample_mean_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs, targets = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    expected = F.cross_entropy(model(inputs), targets).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss stays that of this model
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=3)  # batches of 3, 3 and 1
    assert train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_in_any_batch_raises_diverged_at_the_epoch_end(bad):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    inputs = torch.randn(8, 4)
    inputs[2, 1] = bad  # in the first of two batches: the second one trains on as usual
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(inputs, torch.tensor([0, 1, 0, 1] * 2)), batch_size=4)
    with pytest.raises(Diverged, match=r"^training loss became (nan|inf)$"):
        train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, CPU)


# --- early stopping --------------------------------------------------------------------------

EARLY_STOPPING_CASES = [
    # patience, metrics, epoch it stops at (None: never), best, best epoch
    (2, [0.5, 0.6, 0.6, 0.55], 4, 0.6, 2),  # a tie is no improvement
    (1, [0.5, 0.5], 2, 0.5, 1),
    (1, [0.3, 0.4, 0.5], None, 0.5, 3),
    (3, [0.1, 0.2, 0.1, 0.3, 0.2, 0.2], None, 0.3, 4),  # 2 bad epochs < 3
    (3, [0.9, 0.1, 0.2, 0.3, 0.95], 4, 0.9, 1),
]


@pytest.mark.parametrize(("patience", "metrics", "stop_epoch", "best", "best_epoch"), EARLY_STOPPING_CASES)
def test_early_stopping(patience, metrics, stop_epoch, best, best_epoch):
    stopper = EarlyStopping(patience)
    stopped = None
    for epoch, metric in enumerate(metrics, start=1):
        improved = stopper.update(metric, epoch)
        assert improved == (epoch == 1 or metric > max(metrics[: epoch - 1]))
        if stopper.should_stop:
            stopped = epoch
            break
    assert (stopped, stopper.best, stopper.best_epoch) == (stop_epoch, best, best_epoch)


@pytest.mark.parametrize("patience", [0, -1])
def test_early_stopping_needs_patience_of_at_least_one(patience):
    with pytest.raises(TunerError, match=rf"^patience must be >= 1, got {patience}$"):
        EarlyStopping(patience)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_early_stopping_state_round_trip(split):
    metrics = [0.4, 0.7, 0.6, 0.7, 0.65]
    whole = EarlyStopping(3)
    decisions = [(whole.update(m, e), whole.should_stop) for e, m in enumerate(metrics, start=1)]

    first = EarlyStopping(3)
    for epoch, metric in enumerate(metrics[:split], start=1):
        first.update(metric, epoch)
    # Checkpoints are read back with weights_only=True: the state must survive that.
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state_dict() == first.state_dict()
    rest = [(resumed.update(m, e), resumed.should_stop) for e, m in enumerate(metrics[split:], start=split + 1)]
    assert rest == decisions[split:]
    assert resumed.state_dict() == whole.state_dict() == {"best": 0.7, "best_epoch": 2, "bad_epochs": 3}
