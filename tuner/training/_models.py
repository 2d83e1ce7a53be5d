"""Build classifiers with a new head, load their weights and freeze their backbones."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tuner.errors import ModelError
from tuner.training._sources import (  # noqa: F401  (IMAGENET_* and available_models are re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchvisionSource,
    available_models,
    short_reason,
    source_for,
)

FREEZE_STRATEGIES = ("head", "last_blocks", "full", "gradual")

# A container needs this many parameter-holding children to count as a backbone's
# block list: smaller ones are wrappers such as (features, classifier) or a two-conv stem.
_MIN_BLOCKS = 3
_MAX_KEYS_SHOWN = 5
# Auxiliary classifiers of googlenet (aux1, aux2) and inception_v3 (AuxLogits).
_AUX_HEADS = ("aux1", "aux2", "AuxLogits")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_NORMS = _BATCH_NORMS + (
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d
)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a model name (see tuner.training._sources), its starting weights and its new head."""

    name: str
    weights: str = "imagenet"
    num_classes: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        source_for(self.name)
        _check_weights_field(self.weights)
        _check_num_classes(self.num_classes)
        _check_dropout(self.dropout)


@dataclass
class BuiltModel:
    """A model with its new head, the head's dotted name and the input normalisation it expects.

    `on_features` maps the head's input (what the feature cache holds) to the model's output:
    the head itself, or for squeezenet, whose head is a 1x1 conv on the last feature map, the
    head followed by the ReLU, global pooling and flatten the model applies after it.
    """

    model: nn.Module
    head: nn.Module
    head_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    on_features: nn.Module


def build_model(spec: ModelSpec) -> BuiltModel:
    """Build `spec.name` with the requested weights and a fresh (dropout, linear) head."""
    local_path = _local_weights_path(spec.weights)
    source = source_for(spec.name)
    network = source.build(pretrained=spec.weights == "imagenet")
    model, mean, std = network.model, network.mean, network.std
    _drop_aux_heads(model)
    head_name = _find_head_name(model, spec.name, conv_ok=source.conv_head_ok)
    if local_path is not None:
        _load_local_weights(model, local_path, head_name, spec.name)
    old_head = model.get_submodule(head_name)
    head = _new_head(old_head, spec.num_classes, spec.dropout)
    model.set_submodule(head_name, head)
    tail = _after_head(model, head_name, old_head)
    return BuiltModel(model=model, head=head, head_name=head_name, mean=mean, std=std,
                      on_features=nn.Sequential(head, *tail) if tail else head)


def freeze(
    built: BuiltModel, strategy: str, unfreeze_blocks: int = 1
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Set requires_grad per `strategy`; return (trainable backbone params, head params)."""
    _check_strategy(strategy)
    _check_unfreeze_blocks(unfreeze_blocks)
    head_params = _unique(built.head.parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in _unique(built.model.parameters()) if id(p) not in head_ids]
    for param in head_params:
        param.requires_grad_(True)
    if strategy == "gradual":
        # The optimizer's backbone group holds every block from the start (at the backbone
        # LR); unfreeze_top turns blocks on as training goes. A frozen parameter has no
        # gradient, so the optimizer skips it (no update, no weight decay) until then.
        unfreeze_top(built, 0)
        return backbone, head_params
    trainable = _trainable_backbone(built, backbone, strategy, unfreeze_blocks)
    _set_trainable(backbone, trainable)
    return trainable, head_params


def unfreeze_top(built: BuiltModel, blocks: int) -> int:
    """Make the top `blocks` backbone blocks trainable and the rest frozen (0: head only);
    more blocks than the backbone has unfreezes all of it. Returns the trainable count."""
    head_ids = {id(p) for p in built.head.parameters()}
    backbone = [p for p in _unique(built.model.parameters()) if id(p) not in head_ids]
    trainable = [] if blocks == 0 else _trainable_backbone(built, backbone, "last_blocks", blocks)
    _set_trainable(backbone, trainable)
    return count_trainable(built.model)


def _set_trainable(backbone: list[nn.Parameter], trainable: list[nn.Parameter]) -> None:
    trainable_ids = {id(p) for p in trainable}
    for param in backbone:
        param.requires_grad_(id(param) in trainable_ids)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except frozen BatchNorms stay in eval so their running stats stay put."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every layer of `module` that can, from torch's current RNG."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


def count_trainable(model: nn.Module) -> int:
    """Number of scalar parameters that require grad."""
    return sum(p.numel() for p in _unique(model.parameters()) if p.requires_grad)


def weights_cache_path(name: str) -> pathlib.Path:
    """Where torchvision's hub cache looks for the DEFAULT weights file of model `name`."""
    return TorchvisionSource.checked(name).cache_path()


# --- validation -----------------------------------------------------------------------------


def _check_weights_field(weights: object) -> None:
    if not isinstance(weights, str) or not weights:
        raise ModelError(
            f"--weights must be imagenet, none or a path to a state dict file, got {weights!r}"
        )


def _check_num_classes(num_classes: object) -> None:
    # bool is an int subclass; True would silently mean one class.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _check_dropout(dropout: object) -> None:
    ok_type = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
    # Written so that NaN fails the range test too.
    if not ok_type or not 0 <= dropout < 1:
        raise ModelError(f"dropout must be a number in [0, 1), got {dropout!r}")


def _check_strategy(strategy: object) -> None:
    if strategy not in FREEZE_STRATEGIES:
        raise ModelError(
            f"freeze strategy must be one of {', '.join(FREEZE_STRATEGIES)}, got {strategy!r}"
        )


def _check_unfreeze_blocks(unfreeze_blocks: object) -> None:
    if isinstance(unfreeze_blocks, bool) or not isinstance(unfreeze_blocks, int) or unfreeze_blocks < 1:
        raise ModelError(f"unfreeze_blocks must be an integer >= 1, got {unfreeze_blocks!r}")


def _local_weights_path(weights: str) -> pathlib.Path | None:
    """None for the imagenet/none keywords, else the existing state dict file `weights` names."""
    if weights in ("imagenet", "none"):
        return None
    path = pathlib.Path(weights).expanduser()
    if not path.exists():
        raise ModelError(
            f"--weights must be imagenet, none or a path to a state dict file, got {weights!r} (no such file)"
        )
    if not path.is_file():
        raise ModelError(f"--weights {weights!r} is not a file")
    return path


# --- building -------------------------------------------------------------------------------


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove googlenet/inception auxiliary classifiers so that model(x) is always a tensor."""
    if not getattr(model, "aux_logits", False):
        return
    model.aux_logits = False
    for attr in _AUX_HEADS:
        if hasattr(model, attr):
            setattr(model, attr, None)


def _find_head_name(model: nn.Module, name: str, conv_ok: bool) -> str:
    """Dotted name of the last Linear (or, for squeezenet, last 1x1 Conv2d) in registration order."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    if convs and conv_ok:
        return convs[-1]
    if not conv_ok:
        raise ModelError(f"model {name!r} has no final nn.Linear for tuner to replace with its own head")
    raise ModelError(f"cannot find the classification layer of model {name!r}")


def _after_head(model: nn.Module, head_name: str, old_head: nn.Module) -> list[nn.Module]:
    """What the model applies to the head's output before returning it, so that a head trained
    on cached features computes what the whole model does.

    The head's later siblings when its parent is a Sequential (which runs them in order:
    squeezenet's classifier is dropout, conv, ReLU, global average pool), and for a conv head
    a flatten to (batch, classes), as squeezenet's forward does after its classifier. A final
    Linear (every other torchvision model, timm's, Lite0) has nothing after it.
    """
    parent_name, _, child = head_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    after: list[nn.Module] = []
    if isinstance(parent, nn.Sequential):
        names = [name for name, _ in parent.named_children()]
        after = [module for name, module in parent.named_children()][names.index(child) + 1:]
    if isinstance(old_head, nn.Conv2d):
        after.append(nn.Flatten(1))
    return after


def _new_head(old: nn.Module, num_classes: int, dropout: float) -> nn.Sequential:
    if isinstance(old, nn.Linear):
        layer: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        layer = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    return nn.Sequential(UniformMaskDropout(dropout), layer)


class UniformMaskDropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from uniform numbers: the same distribution, twice as fast.

    torch's CPU dropout kernel draws a Bernoulli number per element at about 10 ns each; a
    uniform draw and a comparison take half that. For a head trained on cached features the
    dropout mask was a third of each epoch. On a GPU torch's fused kernel is already fast.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or inputs.is_cuda or self.p >= 1:
            return super().forward(inputs)
        keep = torch.rand_like(inputs) >= self.p
        return inputs * keep * (1.0 / (1.0 - self.p))


# --- local weights --------------------------------------------------------------------------


def _load_local_weights(model: nn.Module, path: pathlib.Path, head_name: str, name: str) -> None:
    state = _state_dict_from_file(path)
    state = _strip_prefix(state, "module.")
    state = {k: v for k, v in state.items() if not _is_under(k, _AUX_HEADS)}
    _load_matching(model, state, head_name, name, path)


def _state_dict_from_file(path: pathlib.Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises many unrelated types (UnpicklingError, RuntimeError, ValueError,
    # EOFError, ...) on a file that is not a checkpoint; all mean the same to the user.
    except Exception as exc:
        raise ModelError(f"cannot read {str(path)!r} as a torch file ({short_reason(exc)})") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{str(path)!r} holds no state dict (expected a mapping of parameter names to tensors, "
            "or one under a 'model' or 'state_dict' key)"
        )
    return dict(obj)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _load_matching(
    model: nn.Module, state: dict[str, torch.Tensor], head_name: str, name: str, path: pathlib.Path
) -> None:
    """Load strictly; tolerate differences confined to the head, which is replaced anyway."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state, strict=True)
        return
    problems = {
        "missing keys": [k for k in missing if not _is_under(k, [head_name])],
        "unexpected keys": [k for k in unexpected if not _is_under(k, [head_name])],
        "wrong shapes": [k for k in reshaped if not _is_under(k, [head_name])],
    }
    if any(problems.values()):
        raise ModelError(f"state dict in {str(path)!r} does not fit {name}: {_describe(problems)}")
    model.load_state_dict({k: v for k, v in state.items() if not _is_under(k, [head_name])}, strict=False)


def _describe(problems: dict[str, list[str]]) -> str:
    parts = []
    for label, keys in problems.items():
        if not keys:
            continue
        shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
        more = f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else ""
        parts.append(f"{label}: {shown}{more}")
    return "; ".join(parts)


# --- freezing -------------------------------------------------------------------------------


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out


def _trainable_backbone(
    built: BuiltModel, backbone: list[nn.Parameter], strategy: str, unfreeze_blocks: int
) -> list[nn.Parameter]:
    if strategy == "head":
        return []
    if strategy == "full":
        return list(backbone)
    blocks = _backbone_blocks(built.model, built.head)
    if unfreeze_blocks > len(blocks):
        return list(backbone)
    first_ids = {id(p) for p in blocks[-unfreeze_blocks].parameters()}
    start = next(i for i, p in enumerate(backbone) if id(p) in first_ids)
    return backbone[start:]


def _backbone_blocks(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, in order: the parameter-holding children of one container.

    The container is the shallowest of the model and its Sequential/ModuleList submodules
    with at least _MIN_BLOCKS such children (more children wins at equal depth; failing
    that, the one with the most). Shallowest picks stages (resnet layers, convnext/swin
    features, regnet trunk_output, vit encoder layers) rather than the longest run of
    sub-blocks inside one stage (resnet101 layer3, convnext features.5). Children holding
    the head are not blocks, nor are lone norm layers (resnet bn1, densenet norm5): they
    belong to the block before them and train with it.
    """
    best: tuple[tuple[int, int, int], list[nn.Module]] | None = None
    for name, module in model.named_modules():
        if not _is_container(name, module, head):
            continue
        blocks = [c for c in module.children() if _is_block(c, head)]
        if len(blocks) >= _MIN_BLOCKS:
            rank = (0, _depth(name), -len(blocks))
        else:  # no real block list: fall back to the container with the most blocks
            rank = (1, -len(blocks), _depth(name))
        if best is None or rank < best[0]:
            best = (rank, blocks)
    return _expand_lone_block_list(best[1], head) if best else []


def _expand_lone_block_list(blocks: list[nn.Module], head: nn.Module) -> list[nn.Module]:
    """(stem, [b1 .. bn], final conv) -> (stem, b1 .. bn, final conv).

    EfficientNet-Lite0 and timm's EfficientNets and MobileNets hold their stem conv, one
    block list and their final conv side by side at the top, so the top wins as the
    shallowest container, with three "blocks" of which the middle one is nearly the whole
    network. When exactly one block is a container, and it is a block list, its blocks take
    its place: the list torchvision's efficientnets give (their stem, stages and final conv).
    Several containers side by side (resnet's layer1..4, swin's stages) are kept as they are.
    """
    lists = [i for i, b in enumerate(blocks) if isinstance(b, (nn.Sequential, nn.ModuleList))]
    if len(lists) != 1 or sum(_is_block(c, head) for c in blocks[lists[0]].children()) < _MIN_BLOCKS:
        return blocks
    i = lists[0]
    return blocks[:i] + [c for c in blocks[i].children() if _is_block(c, head)] + blocks[i + 1:]


def _is_container(name: str, module: nn.Module, head: nn.Module) -> bool:
    if name and not isinstance(module, (nn.Sequential, nn.ModuleList)):
        return False
    return not any(module is m for m in head.modules())


def _is_block(child: nn.Module, head: nn.Module) -> bool:
    if any(m is head for m in child.modules()):
        return False
    holders = [m for m in child.modules() if next(m.parameters(recurse=False), None) is not None]
    return any(not isinstance(m, _NORMS) for m in holders)


def _depth(name: str) -> int:
    return name.count(".") + 1 if name else 0
