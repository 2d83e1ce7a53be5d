"""A self-describing model folder: plain weights, model.json, a README that loads it, optional TorchScript."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tuner.errors import ModelError
from tuner.training import LITE0, TIMM_PREFIX, ModelSpec, build_model, eval_transform, image_to_tensor

FORMAT = "tuner-model/1"
INFO_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "model.torchscript.pt"
README_FILE = "README.md"
# Multi-label models predict every label whose probability reaches this.
THRESHOLD = 0.5
# googlenet and inception_v3 train without their auxiliary heads; a plain build must leave them out too.
AUX_MODELS = ("googlenet", "inception_v3")


def model_kind(name: str) -> str:
    """torchvision, timm (`timm:NAME`), function (`MODULE:FUNCTION`) or the built-in efficientnet_lite0."""
    if name == LITE0:
        return LITE0
    if name.startswith(TIMM_PREFIX):
        return "timm"
    if ":" in name:
        return "function"
    return "torchvision"


def plain_state_dict(state: Mapping[str, torch.Tensor], head_name: str) -> dict[str, torch.Tensor]:
    """Training keys to the plain architecture's keys: `fc.1.weight` -> `fc.weight`.

    tuner's head is Sequential(dropout, linear) at the old head's place. The dropout holds
    no weights and does nothing in eval mode, so without it the linear sits where the
    architecture's own head was, and `torchvision.models.resnet18(num_classes=10)` (or
    timm's create_model with num_classes) loads the file as it is.
    """
    inner = f"{head_name}.1."
    return {(head_name + "." + key[len(inner):] if key.startswith(inner) else key): value.detach().cpu()
            for key, value in state.items()}


@dataclass(frozen=True)
class ModelInfo:
    """What model.json says: enough to rebuild, preprocess and name the outputs."""

    model: str
    head: str
    classes: tuple[str, ...]
    multilabel: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    doc: dict
    # logits / temperature are the calibrated logits: one T, or one per label; (1.0,) before calibration.
    temperature: tuple[float, ...] = (1.0,)

    @property
    def kind(self) -> str:
        return model_kind(self.model)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], where: str) -> "ModelInfo":
        try:
            return cls(model=str(doc["model"]), head=str(doc["head"]), classes=tuple(map(str, doc["classes"])),
                       multilabel=doc["task"] == "multi_label", image_size=int(doc["image_size"]),
                       mean=tuple(map(float, doc["mean"])), std=tuple(map(float, doc["std"])), doc=dict(doc),
                       temperature=read_temperature(doc, where))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: not a tuner model description ({type(exc).__name__}: {exc})") from None


def read_temperature(doc: Mapping[str, Any], where: str) -> tuple[float, ...]:
    """model.json's temperature: a positive number, or one per class; a folder written before has none (1)."""
    value = doc.get("temperature", 1.0)
    values = tuple(map(float, value if isinstance(value, list) else [value]))
    if not values or not all(0 < t < float("inf") for t in values) or len(values) not in (1, len(doc["classes"])):
        raise ModelError(f"{where}: temperature must be a positive number or one per class, got {value!r}")
    return values


def read_info(folder: str | Path) -> ModelInfo:
    path = Path(folder).expanduser() / INFO_FILE
    if not Path(folder).expanduser().is_dir():
        raise ModelError(f"--model {folder}: no such folder (make one with tuner retrain --out {folder})")
    if not path.is_file():
        raise ModelError(f"--model {folder}: no {INFO_FILE} there (not a folder written by tuner retrain)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: not a tuner model description (expected a JSON object)")
    return ModelInfo.from_doc(doc, str(path))


class Preprocess:
    """A PIL image (any mode) to the model's input, exactly as training decoded and normalised it."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = eval_transform(mean, std)

    def __call__(self, image) -> torch.Tensor:
        return self.normalize(image_to_tensor(image, self.image_size))

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, mean={self.mean}, std={self.std})"


def build_plain(info: ModelInfo) -> nn.Module:
    """The architecture with a plain linear head for the model's classes (random weights)."""
    built = build_model(ModelSpec(name=info.model, weights="none", num_classes=len(info.classes)))
    built.model.set_submodule(built.head_name, built.head[1])
    return built.model


class Temperature:
    """A forward hook that divides the model's logits by its temperature: calibrated probabilities."""

    def __init__(self, temperature: Sequence[float]) -> None:
        self.temperature = torch.tensor(list(temperature))

    def __call__(self, module: nn.Module, inputs, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.device, logits.dtype)


def load_model(folder: str | Path, *, calibrated: bool = True) -> nn.Module:
    """The model of a folder written by `tuner retrain`, on the CPU in eval mode.

    Its logits are divided by model.json's temperature (a forward hook), so softmax (sigmoid
    for multi-label models) gives calibrated probabilities; `calibrated=False` gives the
    logits as trained. It carries `.classes`, `.multilabel`, `.threshold`, `.temperature`,
    `.info` (model.json) and `.preprocess` (a PIL image to its input tensor). They are kept
    out of the module tree (object.__setattr__), so state_dict(), .to() and repr stay the
    architecture's own.
    """
    info = read_info(folder)
    model = build_plain(info)
    weights = Path(folder).expanduser() / info.doc.get("weights_file", WEIGHTS_FILE)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise ModelError(f"--model {folder}: {weights.name} is missing") from None
    except Exception as exc:  # a damaged file or a different architecture: same remedy
        raise ModelError(f"--model {folder}: cannot load {weights.name} into {info.model} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    model.eval()
    if calibrated:
        model.register_forward_hook(Temperature(info.temperature))
    temperature = info.temperature[0] if len(info.temperature) == 1 else list(info.temperature)
    for name, value in (("classes", list(info.classes)), ("multilabel", info.multilabel),
                        ("threshold", THRESHOLD if info.multilabel else None), ("temperature", temperature),
                        ("info", info.doc),
                        ("preprocess", Preprocess(info.image_size, info.mean, info.std))):
        object.__setattr__(model, name, value)
    return model


class Normalized(nn.Module):
    """The exported model: float RGB in [0, 1] in, calibrated logits (logits / temperature) out;
    the normalisation and the temperature are inside."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 temperature: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(list(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std) / self.temperature


def export_torchscript(folder: Path, model: nn.Module, info: ModelInfo) -> Path:
    """A traced TorchScript file that needs only torch: model.json travels inside it as an extra file."""
    wrapper = Normalized(model, info.mean, info.std, info.temperature).eval()
    example = torch.rand(1, 3, info.image_size, info.image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit is in maintenance; its deprecation notes are not the user's business here.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example)
        path = folder / TORCHSCRIPT_FILE
        torch.jit.save(traced, str(path), _extra_files={INFO_FILE: json.dumps(info.doc)})
    return path


def write_folder(folder: Path, state: Mapping[str, torch.Tensor], doc: dict, *, torchscript: bool) -> dict:
    """Weights, model.json and README.md (and the TorchScript file); returns model.json's content."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(plain_state_dict(state, doc["head"]), folder / WEIGHTS_FILE)
    doc = {**doc, "weights_file": WEIGHTS_FILE, "torchscript_file": TORCHSCRIPT_FILE if torchscript else None}
    info = ModelInfo.from_doc(doc, str(folder / INFO_FILE))
    if torchscript:
        model = build_plain(info)
        model.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
        export_torchscript(folder, model.eval(), info)
    (folder / INFO_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (folder / README_FILE).write_text(readme(folder, info, torchscript), encoding="utf-8")
    return doc


def plain_build_code(info: ModelInfo) -> tuple[str, str] | None:
    """(import, build line) for the bare architecture of the weights file; None for MODULE:FUNCTION."""
    n = len(info.classes)
    if info.kind == "torchvision":
        extra = ", aux_logits=False, init_weights=False" if info.model in AUX_MODELS else ""
        return "torchvision", f"model = torchvision.models.get_model({info.model!r}, num_classes={n}{extra})"
    if info.kind == "timm":
        return "timm", f"model = timm.create_model({info.model[len('timm:'):]!r}, num_classes={n})"
    if info.kind == "efficientnet_lite0":
        return ("efficientnet_lite_pytorch",
                f"model = efficientnet_lite_pytorch.EfficientNet.from_name('efficientnet-lite0', num_classes={n})")
    return None


def readme(folder: Path, info: ModelInfo, torchscript: bool) -> str:
    doc = info.doc
    task = "multi-label (every label with probability >= 0.5)" if info.multilabel else "single-label"
    activation = "sigmoid()" if info.multilabel else "softmax(1)"
    lines = [
        f"# {info.model} from study {doc.get('study')}, trial {doc.get('trial')}",
        "",
        f"{len(info.classes)} classes, {task}; {doc.get('metric')} = {doc.get('value', 0):.4f} "
        f"({doc.get('value_on', 'val')}). Input: RGB, {info.image_size}x{info.image_size}, "
        f"mean {list(info.mean)}, std {list(info.std)}. All details are in {INFO_FILE}.",
        *_with_tuner(folder, activation),
    ]
    build = plain_build_code(info)
    if build is not None:
        lines += _without_tuner(folder, build, activation)
    if torchscript:
        lines += _torchscript_only(folder, info)
    return "\n".join(lines) + "\n"


def _with_tuner(folder: Path, activation: str) -> list[str]:
    """The README's section that loads the folder through tuner."""
    return [
        "",
        "## With tuner",
        "",
        "```python",
        "import tuner",
        "from PIL import Image",
        "",
        f"model = tuner.load_model({str(folder)!r})  # eval mode, on the CPU, logits / temperature",
        "x = model.preprocess(Image.open('image.jpg')).unsqueeze(0)",
        f"probabilities = model(x).{activation}[0]",
        "print(dict(zip(model.classes, probabilities.tolist())))",
        "```",
        "",
        f"Or from the shell: `tuner predict --model {folder} image.jpg`.",
    ]


def _without_tuner(folder: Path, build: tuple[str, str], activation: str) -> list[str]:
    """The README's section that rebuilds the bare architecture and loads the plain weights."""
    return [
        "",
        "## Without tuner",
        "",
        "```python",
        f"import json, torch, {build[0]}",
        "from PIL import Image",
        "from torchvision.transforms import v2",
        "",
        f"info = json.load(open({str(folder / INFO_FILE)!r}))",
        build[1],
        f"model.load_state_dict(torch.load({str(folder / WEIGHTS_FILE)!r}, weights_only=True))",
        "model.eval()",
        "preprocess = v2.Compose([v2.RGB(), v2.Resize((info['image_size'], info['image_size'])), v2.ToImage(),",
        "                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(info['mean'], info['std'])])",
        "# Fitted by tuner retrain: dividing by it makes the probabilities calibrated.",
        "temperature = torch.tensor(info.get('temperature', 1.0))",
        "logits = model(preprocess(Image.open('image.jpg')).unsqueeze(0)) / temperature",
        f"probabilities = logits.{activation}[0]",
        "print(dict(zip(info['classes'], probabilities.tolist())))",
        "```",
    ]


def _torchscript_only(folder: Path, info: ModelInfo) -> list[str]:
    """The README's section that loads the TorchScript file with torch alone."""
    return [
        "",
        "## TorchScript (torch only)",
        "",
        f"`{TORCHSCRIPT_FILE}` takes float RGB in [0, 1], N x 3 x {info.image_size} x {info.image_size}; "
        "the normalisation is inside, and so is the temperature: its logits are calibrated.",
        "",
        "```python",
        "import json, torch",
        "",
        "extra = {'model.json': ''}",
        f"model = torch.jit.load({str(folder / TORCHSCRIPT_FILE)!r}, _extra_files=extra)",
        "classes = json.loads(extra['model.json'])['classes']",
        f"logits = model(torch.rand(1, 3, {info.image_size}, {info.image_size}))",
        "```",
    ]
