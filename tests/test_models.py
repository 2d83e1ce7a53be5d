"""Tests of tuner.training._models: head replacement, weight loading, freezing and train mode."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchvision
from conftest import assert_backbone_equals
from torch import nn

from tuner.errors import ModelError, TunerError
from tuner.training._models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BuiltModel,
    ModelSpec,
    UniformMaskDropout,
    available_models,
    build_model,
    count_trainable,
    freeze,
    set_train_mode,
    weights_cache_path,
)

RESNET18_FILE = "resnet18-f37072fd.pth"


# --- helpers and fixtures -------------------------------------------------------------------


def _build(name: str, device: str = "cpu", **kwargs) -> BuiltModel:
    """Build with random init; "meta" gives the structure without allocating weights."""
    kwargs.setdefault("weights", "none")
    with torch.device(device):
        return build_model(ModelSpec(name, **kwargs))


def _names(model: nn.Module, params) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def _all_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _requires_grad_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _resnet_state(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A reproducible random state dict straight from torchvision, independent of our code."""
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).state_dict()


# --- model list and spec validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("resnet18", True),
        ("vit_b_16", True),
        ("squeezenet1_1", True),
        ("fasterrcnn_resnet50_fpn", False),  # detection
        ("raft_large", False),  # optical flow
        ("r3d_18", False),  # video
    ],
)
def test_available_models_lists_classifiers_only(name, listed):
    names = available_models()
    assert names == sorted(names)
    assert (name in names) is listed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "resnet19"},
            "unknown model 'resnet19'; run 'tuner models' to list them "
            "(did you mean: resnet18, resnet152, resnet101?)",
        ),
        ({"name": "qqqq"}, "unknown model 'qqqq'; run 'tuner models' to list them"),
        ({"name": "resnet18", "num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"name": "resnet18", "num_classes": True}, "num_classes must be an integer >= 2, got True"),
        ({"name": "resnet18", "num_classes": 3.0}, "num_classes must be an integer >= 2, got 3.0"),
        ({"name": "resnet18", "dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
        ({"name": "resnet18", "dropout": -0.1}, "dropout must be a number in [0, 1), got -0.1"),
        ({"name": "resnet18", "dropout": math.nan}, "dropout must be a number in [0, 1), got nan"),
        ({"name": "resnet18", "dropout": "0.5"}, "dropout must be a number in [0, 1), got '0.5'"),
        (
            {"name": "resnet18", "weights": ""},
            "--weights must be imagenet, none or a path to a state dict file, got ''",
        ),
        (
            {"name": "resnet18", "weights": "xyz"},
            "--weights must be imagenet, none or a path to a state dict file, got 'xyz' (no such file)",
        ),
    ],
)
def test_invalid_spec_is_rejected_with_exact_message(kwargs, message):
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec(**kwargs))
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, TunerError)


@pytest.mark.parametrize(("num_classes", "dropout"), [(2, 0.0), (1000, 0.999), (3, 0)])
def test_boundary_values_are_accepted(num_classes, dropout):
    built = _build("resnet18", "meta", num_classes=num_classes, dropout=dropout)
    assert built.head[1].out_features == num_classes
    assert built.head[0].p == dropout


# --- head replacement -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head_name", "layer_type", "in_features", "num_classes", "dropout", "forward"),
    [
        ("resnet18", "fc", nn.Linear, 512, 2, 0.0, True),
        ("mobilenet_v3_small", "classifier.3", nn.Linear, 1024, 3, 0.2, True),
        ("efficientnet_b0", "classifier.1", nn.Linear, 1280, 4, 0.5, True),
        ("convnext_tiny", "classifier.2", nn.Linear, 768, 5, 0.1, True),
        ("googlenet", "fc", nn.Linear, 1024, 3, 0.3, True),
        ("squeezenet1_1", "classifier.1", nn.Conv2d, 512, 7, 0.4, True),
        ("vit_b_16", "heads.head", nn.Linear, 768, 6, 0.25, False),  # needs 224 input
    ],
)
def test_head_is_replaced_by_dropout_and_new_layer(
    name, head_name, layer_type, in_features, num_classes, dropout, forward
):
    built = _build(name, num_classes=num_classes, dropout=dropout)
    assert built.head_name == head_name
    assert built.model.get_submodule(head_name) is built.head
    dropout_layer, layer = built.head
    assert type(built.head) is nn.Sequential and len(built.head) == 2
    assert type(dropout_layer) is UniformMaskDropout and dropout_layer.p == dropout
    assert type(layer) is layer_type
    if layer_type is nn.Linear:
        assert (layer.in_features, layer.out_features) == (in_features, num_classes)
    else:
        assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (in_features, num_classes, (1, 1))
    assert (built.mean, built.std) == (IMAGENET_MEAN, IMAGENET_STD)
    if forward:
        for train in (False, True):  # train mode too: googlenet must not return aux outputs
            built.model.train(train)
            out = built.model(torch.randn(2, 3, 32, 32))
            assert isinstance(out, torch.Tensor) and out.shape == (2, num_classes)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_uniform_mask_dropout_keeps_1_minus_p_and_scales_the_kept_values(p):
    inputs = torch.ones(400, 1000, requires_grad=True)
    torch.manual_seed(0)
    out = UniformMaskDropout(p).train()(inputs)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 400,000 draws: sd below 0.001
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    out.sum().backward()  # the gradient flows through the kept elements only, scaled alike
    assert torch.equal(inputs.grad, out.detach())
    torch.manual_seed(0)
    assert torch.equal(UniformMaskDropout(p).train()(inputs), out)  # the global RNG decides it


@pytest.mark.parametrize("p, training, expected", [
    pytest.param(0.3, False, "identity", id="eval"),
    pytest.param(0.0, True, "identity", id="p=0"),
    pytest.param(1.0, True, "zeros", id="p=1"),
])
def test_uniform_mask_dropout_edge_cases(p, training, expected):
    inputs = torch.randn(8, 16)
    out = UniformMaskDropout(p).train(training)(inputs)
    assert torch.equal(out, inputs if expected == "identity" else torch.zeros_like(inputs))


# Structure of one model per family, built on the meta device (no weights allocated), so
# that a torchvision upgrade that moves heads or blocks is caught: the replaced head, and the
# first backbone parameter that trains under last_blocks with one block.
@pytest.mark.parametrize(
    ("name", "head_name", "first_trainable"),
    [
        ("alexnet", "classifier.6", "features.10.weight"),
        ("convnext_base", "classifier.2", "features.7.0.layer_scale"),
        ("densenet121", "classifier", "features.denseblock4.denselayer1.norm1.weight"),
        ("efficientnet_v2_s", "classifier.1", "features.7.0.weight"),
        ("googlenet", "fc", "inception5b.branch1.conv.weight"),
        ("inception_v3", "fc", "Mixed_7c.branch1x1.conv.weight"),
        ("maxvit_t", "classifier.5", "blocks.3.layers.0.layers.MBconv.proj.1.weight"),
        ("mnasnet0_5", "classifier.1", "layers.14.weight"),
        ("mobilenet_v2", "classifier.1", "features.18.0.weight"),
        ("resnet152", "fc", "layer4.0.conv1.weight"),
        ("resnext50_32x4d", "fc", "layer4.0.conv1.weight"),
        ("shufflenet_v2_x0_5", "fc", "conv5.0.weight"),
        ("squeezenet1_0", "classifier.1", "features.12.squeeze.weight"),
        ("swin_v2_t", "head", "features.7.0.norm1.weight"),
        ("vgg11_bn", "classifier.6", "features.25.weight"),
        ("vit_b_32", "heads.head", "encoder.layers.encoder_layer_11.ln_1.weight"),
        ("wide_resnet50_2", "fc", "layer4.0.conv1.weight"),
    ],
)
def test_family_head_and_last_block(name, head_name, first_trainable):
    built = _build(name, "meta", num_classes=3)
    assert built.head_name == head_name
    backbone, head = freeze(built, "last_blocks", 1)
    assert _names(built.model, backbone)[0] == first_trainable
    assert _names(built.model, head) == [f"{head_name}.1.weight", f"{head_name}.1.bias"]
    assert not any(n.startswith(("aux1.", "aux2.", "AuxLogits.")) for n in _all_names(built.model))


def test_regnet_head_and_last_block():
    # regnet computes its widths with tensors at build time, so it cannot be built on meta.
    built = _build("regnet_y_400mf", num_classes=3)
    backbone, _ = freeze(built, "last_blocks", 1)
    assert built.head_name == "fc"
    assert set(_names(built.model, backbone)) == {
        n for n in _all_names(built.model) if n.startswith("trunk_output.block4.")
    }


# --- freezing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "device", "strategy", "blocks", "backbone_prefixes"),
    [
        ("resnet18", "cpu", "head", 1, ()),
        ("resnet18", "cpu", "last_blocks", 1, ("layer4.",)),
        ("resnet18", "cpu", "last_blocks", 2, ("layer3.", "layer4.")),
        ("resnet18", "cpu", "last_blocks", 4, ("layer1.", "layer2.", "layer3.", "layer4.")),
        ("resnet18", "cpu", "last_blocks", 5, ("",)),  # conv1 is the first block; bn1 joins it
        ("resnet18", "cpu", "last_blocks", 99, ("",)),  # more blocks than there are: all train
        ("resnet18", "cpu", "full", 1, ("",)),
        ("mobilenet_v3_small", "cpu", "last_blocks", 1, ("features.12.", "classifier.")),
        ("mobilenet_v3_small", "cpu", "head", 3, ()),
        ("convnext_tiny", "meta", "last_blocks", 1, ("features.7.", "classifier.")),
        ("vit_b_16", "meta", "last_blocks", 1, ("encoder.layers.encoder_layer_11.", "encoder.ln.")),
        ("vit_b_16", "meta", "last_blocks", 12, ("encoder.layers.", "encoder.ln.")),
        ("vit_b_16", "meta", "last_blocks", 13, ("",)),
    ],
)
def test_freeze_trains_exactly_the_expected_parameters(name, device, strategy, blocks, backbone_prefixes):
    built = _build(name, device)
    head_prefix = built.head_name + "."
    backbone, head = freeze(built, strategy, blocks)

    every = _all_names(built.model)
    expected_backbone = [n for n in every if n.startswith(backbone_prefixes) and not n.startswith(head_prefix)]
    expected_head = [n for n in every if n.startswith(head_prefix)]
    assert _names(built.model, backbone) == expected_backbone  # in named_parameters order
    assert _names(built.model, head) == expected_head == [head_prefix + "1.weight", head_prefix + "1.bias"]
    assert _requires_grad_names(built.model) == set(expected_backbone) | set(expected_head)
    assert len({id(p) for p in backbone + head}) == len(backbone) + len(head)  # no duplicates, disjoint


def test_refreezing_undoes_a_previous_strategy():
    built = _build("resnet18")
    freeze(built, "full")
    backbone, head = freeze(built, "head")
    assert backbone == []
    assert _requires_grad_names(built.model) == {"fc.1.weight", "fc.1.bias"}


@pytest.mark.parametrize(
    ("strategy", "blocks", "message"),
    [
        ("all", 1, "freeze strategy must be one of head, last_blocks, full, gradual, got 'all'"),
        ("Head", 1, "freeze strategy must be one of head, last_blocks, full, gradual, got 'Head'"),
        ("last_blocks", 0, "unfreeze_blocks must be an integer >= 1, got 0"),
        ("last_blocks", -2, "unfreeze_blocks must be an integer >= 1, got -2"),
        ("last_blocks", 1.5, "unfreeze_blocks must be an integer >= 1, got 1.5"),
        ("head", True, "unfreeze_blocks must be an integer >= 1, got True"),
    ],
)
def test_bad_freeze_arguments_are_rejected(strategy, blocks, message):
    built = _build("resnet18", "meta")
    with pytest.raises(ModelError) as excinfo:
        freeze(built, strategy, blocks)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("head", 512 * 3 + 3),
        ("full", 11_176_512 + 512 * 3 + 3),  # resnet18 without its 1000-class fc, plus the head
    ],
)
def test_count_trainable(strategy, expected):
    built = _build("resnet18", "meta", num_classes=3)
    freeze(built, strategy)
    assert count_trainable(built.model) == expected


# --- train mode -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "module_name", "training"),
    [
        ("head", "bn1", False),
        ("head", "layer4.1.bn2", False),
        ("head", "fc", True),
        ("head", "", True),
        ("last_blocks", "bn1", False),
        ("last_blocks", "layer1.0.bn1", False),
        ("last_blocks", "layer3.1.bn2", False),
        ("last_blocks", "layer4.0.bn1", True),
        ("last_blocks", "layer4.0.downsample.1", True),
        ("last_blocks", "fc", True),
        ("full", "bn1", True),
    ],
)
def test_set_train_mode_keeps_frozen_batchnorms_in_eval(strategy, module_name, training):
    built = _build("resnet18", "meta")
    freeze(built, strategy, 1)
    built.model.eval()  # start from the opposite of what train mode should give
    set_train_mode(built.model)
    assert built.model.get_submodule(module_name).training is training


def test_every_batchnorm_is_in_eval_when_only_the_head_trains():
    built = _build("mobilenet_v3_small", "meta")
    freeze(built, "head")
    set_train_mode(built.model)
    norms = [m for m in built.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert built.head.training


@pytest.mark.parametrize(
    ("bn_name", "should_change"),
    [("bn1", False), ("layer1.0.bn1", False), ("layer3.1.bn2", False), ("layer4.0.bn1", True)],
)
def test_training_step_leaves_frozen_running_stats_alone(bn_name, should_change):
    torch.manual_seed(0)
    built = _build("resnet18")
    freeze(built, "last_blocks", 1)
    set_train_mode(built.model)
    bn = built.model.get_submodule(bn_name)
    before = bn.running_mean.clone()
    loss = built.model(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    assert (not torch.equal(bn.running_mean, before)) is should_change
    assert (bn.weight.grad is not None) is should_change


# --- imagenet weights through the hub cache -------------------------------------------------


def test_weights_cache_path_follows_torch_home(offline_hub):
    assert weights_cache_path("resnet18") == offline_hub / RESNET18_FILE


def test_weights_cache_path_rejects_unknown_names():
    with pytest.raises(ModelError, match=re.escape("unknown model 'resnet19'")):
        weights_cache_path("resnet19")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_imagenet_weights_load_offline_from_the_cache(offline_hub, name):
    torch.manual_seed(1)
    saved = torchvision.models.get_model(name, weights=None).state_dict()
    path = weights_cache_path(name)
    path.parent.mkdir(parents=True)
    torch.save(saved, path)

    built = build_model(ModelSpec(name, weights="imagenet", num_classes=3))

    assert_backbone_equals(built.model, saved, built.head_name + ".")
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    assert built.mean == tuple(transform.mean) and built.std == tuple(transform.std)
    assert all(isinstance(v, float) for v in built.mean + built.std)


@pytest.mark.parametrize("cache_content", [None, b"not a checkpoint", b"junk"])
def test_imagenet_weights_unavailable_say_how_to_fix(offline_hub, cache_content):
    path = weights_cache_path("resnet18")
    if cache_content is not None:
        path.parent.mkdir(parents=True)
        path.write_bytes(cache_content)
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec("resnet18", weights="imagenet"))
    message = str(excinfo.value)
    assert message.startswith("cannot load imagenet weights for resnet18 (")
    assert f"put the file https://download.pytorch.org/models/{RESNET18_FILE} at {path}" in message
    assert message.endswith("or pass --weights none (random init) or --weights PATH (a local state dict)")


# --- weights from a local file --------------------------------------------------------------


def _with_head(state, head):
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {**body, **head}


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"model": sd}, id="model-key"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict-key"),
        pytest.param(lambda sd: {"module." + k: v for k, v in sd.items()}, id="data-parallel"),
        pytest.param(
            lambda sd: _with_head(sd, {"fc.weight": torch.zeros(5, 512), "fc.bias": torch.zeros(5)}),
            id="other-class-count",
        ),
        pytest.param(
            lambda sd: _with_head(sd, {"fc.1.weight": torch.zeros(3, 512), "fc.1.bias": torch.zeros(3)}),
            id="tuner-head",
        ),
        pytest.param(lambda sd: _with_head(sd, {}), id="backbone-only"),
    ],
)
def test_local_state_dict_loads_the_backbone(tmp_path, wrap):
    saved = _resnet_state(seed=2)
    path = tmp_path / "weights.pt"
    torch.save(wrap(saved), path)

    built = build_model(ModelSpec("resnet18", weights=str(path), num_classes=4))

    assert_backbone_equals(built.model, saved, "fc.")
    assert built.head[1].weight.shape == (4, 512)
    assert (built.mean, built.std) == (IMAGENET_MEAN, IMAGENET_STD)


def _write_torch(obj):
    return lambda path: torch.save(obj, path)


def _bad_conv1(path):
    state = _resnet_state()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            None,
            "--weights must be imagenet, none or a path to a state dict file, got '{path}' (no such file)",
        ),
        (lambda path: path.mkdir(), "--weights '{path}' is not a file"),
        (
            lambda path: path.write_bytes(b"not a checkpoint"),
            "cannot read '{path}' as a torch file (UnpicklingError: ",
        ),
        (
            _write_torch({"epoch": 3}),
            "'{path}' holds no state dict (expected a mapping of parameter names to tensors, "
            "or one under a 'model' or 'state_dict' key)",
        ),
        (_write_torch([1, 2]), "'{path}' holds no state dict ("),
        (
            lambda path: torch.save(_resnet_state("resnet34"), path),
            "state dict in '{path}' does not fit resnet18: unexpected keys: layer1.2.conv1.weight, "
            "layer1.2.bn1.weight, layer1.2.bn1.bias, layer1.2.bn1.running_mean, layer1.2.bn1.running_var (+91 more)",
        ),
        (
            _write_torch({"features.0.weight": torch.zeros(1)}),
            "state dict in '{path}' does not fit resnet18: missing keys: conv1.weight, bn1.weight, "
            "bn1.bias, bn1.running_mean, bn1.running_var (+115 more); unexpected keys: features.0.weight",
        ),
        (_bad_conv1, "state dict in '{path}' does not fit resnet18: wrong shapes: conv1.weight"),
    ],
    ids=["missing", "directory", "garbage", "no-tensors", "not-a-mapping", "resnet34", "foreign", "wrong-shape"],
)
def test_bad_local_weights_are_rejected(tmp_path, write, message):
    path = tmp_path / "weights.pt"
    if write is not None:
        write(path)
    expected = message.format(path=path)
    with pytest.raises(ModelError) as excinfo:
        build_model(ModelSpec("resnet18", weights=str(path)))
    actual = str(excinfo.value)
    if expected.endswith(("(", ": ")):
        assert actual.startswith(expected)
    else:
        assert actual == expected
