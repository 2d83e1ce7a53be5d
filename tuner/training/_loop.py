"""One fine-tuning run's phases: device, optimizer, schedule, loss, train_one_epoch, evaluate."""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn

from tuner.errors import DeviceError, TunerError
from tuner.training._device_spec import parse_device
from tuner.training._hyperparams import Hyperparams

T = TypeVar("T")


class Diverged(Exception):
    """The training loss became NaN or infinite."""


class OutOfMemory(Exception):
    """The device ran out of memory during a step."""


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: device, mixed precision and memory layout."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range. The scaler works on
        # the runtime's own device type (CPU autocast in fp16 is scaled the same way).
        if self.amp_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    parsed = parse_device(spec, torch.cuda.device_count())
    device = torch.device(parsed.type, parsed.index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {spec}: MPS is not available here (use --device cpu)")
    return device


def training_device(spec: str, compile: bool) -> torch.device:
    """The device trials train on, resolved once where a run checks its inputs; with
    `compile`, refused on a CPU that cannot compile (see check_compiler)."""
    device = resolve_device(spec)
    if compile:
        check_compiler(device)
    return device


def check_compiler(device: torch.device) -> None:
    """torch.compile generates C++ on a CPU and Triton kernels on CUDA: without the compiler
    for the device, every trial would fail at its first step."""
    if device.type == "cpu" and not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        raise DeviceError("--compile on CPU needs a C compiler (cc, gcc or clang) on PATH: "
                          "install one (e.g. apt-get install gcc) or leave out --compile")
    if device.type == "cuda":
        try:
            import triton  # noqa: F401  (only whether it imports)
        except ImportError as error:
            raise DeviceError(f"--compile on CUDA needs Triton, which does not import here ({error}): "
                              "install the triton that matches this torch (pip install triton) "
                              "or leave out --compile") from None


# Dynamo counts the recompiles of each code object (a model's forward) for the whole process,
# and past its limit (8 by default) runs that code uncompiled, with one log line. A trial's own
# recompiles (train and eval mode, a new batch size, each step of gradual unfreezing) stay
# well under this limit; those of earlier trials are dropped before each trial (compile_network).
RECOMPILE_LIMIT = 32
RECOMPILE_LIMIT_HIT = "Dynamo recompile limit exceeded"


def compile_network(net: nn.Module) -> nn.Module:
    """torch.compile(net), with dynamo's caches and recompile counts of earlier trials dropped.

    Each trial builds a fresh module (another freeze, head or batch size): the code earlier
    trials compiled would rarely be reused, and would count against the recompile limit
    until torch silently stopped compiling. `torch._dynamo.config.recompile_limit` is raised
    to RECOMPILE_LIMIT (never lowered) for this process.
    """
    torch._dynamo.reset()
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(net)


def recompile_limit_hits() -> int:
    """How often, in this process, dynamo hit its recompile limit and ran the code uncompiled."""
    from torch._dynamo.utils import counters  # torch's own counters; loaded with torch.compile

    return sum(n for key, n in counters["unimplemented"].items() if key.startswith(RECOMPILE_LIMIT_HIT))


def make_runtime(device: torch.device) -> Runtime:
    if device.type != "cuda":
        return Runtime(device)
    if device.index is not None:
        # Whatever takes "the current device" (the DataLoader's pinned-memory thread,
        # Tensor.pin_memory(), caching-allocator calls) would otherwise create a context on
        # GPU 0, and hold memory there, for a worker told to run on cuda:N.
        torch.cuda.set_device(device)
    # cuDNN benchmarks the algorithms of each new input shape once per process and keeps the
    # fastest. The image size is fixed for a study; the batch sizes are a few values of the
    # space, and the last, partial batch of evaluation and feature extraction adds one shape
    # each: a few dozen shapes in all, each tuned once (a fraction of a second per
    # convolution) and reused by every later epoch and trial of this worker. The faster
    # kernels (often 10-30% on convolutions) pay for that within the first epochs.
    torch.backends.cudnn.benchmark = True
    return Runtime(device, amp_dtype=amp_dtype(), channels_last=True)


def amp_dtype() -> torch.dtype:
    """bf16 where this GPU runs it natively (Ampere and later); else fp16, with a GradScaler.

    is_bf16_supported() counts emulated bf16 by default: a V100 or T4 would say yes and
    then run bf16 several times slower than its fp16 tensor cores."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def make_optimizer(hp: Hyperparams, backbone: list[nn.Parameter], head: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Parameter groups give the backbone and head their own learning rates (differential LR)."""
    groups = [{"params": head, "lr": hp.lr, "name": "head"}]
    if backbone:
        backbone_lr = hp.lr if hp.backbone_lr is None else hp.backbone_lr
        groups.append({"params": backbone, "lr": backbone_lr, "name": "backbone"})
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay)
    cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, weight_decay=hp.weight_decay)


def make_scheduler(hp: Hyperparams, optimizer: torch.optim.Optimizer):
    if hp.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.step_size, gamma=hp.step_gamma)
    if hp.scheduler == "plateau":
        # Stepped on the validation metric, which is maximised.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=hp.plateau_factor, patience=hp.plateau_patience
        )
    if hp.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(hp.epochs, hp.cosine_min_lr_ratio))
    return None


def _cosine(epochs: int, min_ratio: float):
    # CosineAnnealingLR's curve as a multiplier, so each param group keeps its own base LR
    # and eta_min is a fraction of it rather than one absolute value for all groups.
    def factor(epoch: int) -> float:
        return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2

    return factor


def step_scheduler(scheduler, metric: float) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


def class_weights(targets: torch.Tensor, num_classes: int, multilabel: bool) -> torch.Tensor:
    """Inverse-frequency weights ("balanced"), from the training set only."""
    if multilabel:
        positives = targets.sum(0).clamp(min=1)
        return (len(targets) - positives).clamp(min=1) / positives  # BCE pos_weight
    counts = torch.bincount(targets, minlength=num_classes).float().clamp(min=1)
    return len(targets) / (num_classes * counts)


def fitting_loss(multilabel: bool) -> str:
    """Multi-label targets are multi-hot rows (BCE-with-logits), single-label ones class
    indices (cross-entropy): the other loss cannot even read them."""
    return "bce_with_logits" if multilabel else "cross_entropy"


def loss_name(hp: Hyperparams, multilabel: bool) -> str:
    """The loss the data trains with (fitting_loss); hp.loss, when given, must be that one."""
    fitting = fitting_loss(multilabel)
    if hp.loss is not None and hp.loss != fitting:
        task = "multi-label" if multilabel else "single-label"
        raise TunerError(f"loss {hp.loss!r} does not fit {task} data, which trains with {fitting}")
    return fitting


def make_loss(hp: Hyperparams, targets: torch.Tensor, num_classes: int, multilabel: bool, device) -> nn.Module:
    name = loss_name(hp, multilabel)
    weight = None
    if hp.class_weighting == "balanced":
        weight = class_weights(targets, num_classes, multilabel).to(device)
    if name == "bce_with_logits":
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=hp.label_smoothing)


def place_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The model on the runtime's device, in the memory layout its inputs get (to_device):
    channels_last weights with NCHW inputs (or the reverse) make every convolution convert
    one of them first."""
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(batch: Iterable[torch.Tensor], runtime: Runtime) -> list[torch.Tensor]:
    out = []
    for tensor in batch:
        tensor = tensor.to(runtime.device, non_blocking=runtime.is_cuda)
        if runtime.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        out.append(tensor)
    return out


# What an allocation failure says when it is a plain RuntimeError rather than torch's
# OutOfMemoryError: the CPU allocator; a CUDA call that ran out of device memory; cuBLAS
# (CUBLAS_STATUS_ALLOC_FAILED), cuSOLVER, cuFFT (CUFFT_ALLOC_FAILED) and cuDNN before 9
# (CUDNN_STATUS_ALLOC_FAILED); cuDNN 9 (CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED,
# ..._HOST_ALLOCATION_FAILED). torch words them "CUDA error: <status> when calling ..." and
# "cuDNN error: <status>".
ALLOCATION_FAILURES = ("can't allocate memory", "CUDA error: out of memory", "_ALLOC_FAILED", "_ALLOCATION_FAILED")


def oom_message(exc: BaseException) -> str | None:
    """The first line of an out-of-memory error (torch's, or an allocation failure above); None for any other."""
    allocation_failed = isinstance(exc, RuntimeError) and any(text in str(exc) for text in ALLOCATION_FAILURES)
    if not isinstance(exc, torch.OutOfMemoryError) and not allocation_failed:
        return None
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def without_oom(run: Callable[[], T]) -> T:
    """run(), with an out-of-memory error turned into OutOfMemory; any other error passes through.

    OutOfMemory is raised after the except block, not inside it: the original error's
    traceback holds the frames of the failed forward pass and so its activations, and an
    exception raised in the handler would keep it alive as __context__ (even `from None`)
    until the trial's memory was meant to be free.
    """
    try:
        return run()
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        message = oom_message(exc)
        if message is None:
            raise
    raise OutOfMemory(message)


def free_device_memory(runtime: Runtime) -> None:
    """Collect unreachable tensors (cycles too), then hand the GPU's cached blocks back to the driver."""
    gc.collect()
    if runtime.is_cuda:
        torch.cuda.empty_cache()


def train_one_epoch(model, loader, loss_fn, optimizer, runtime: Runtime, scaler=None, on_batch=None) -> float:
    """One pass over the training data; returns the mean loss. Raises Diverged or OutOfMemory.

    on_batch(n) is called after each step with its batch size (a progress bar advances by it).
    """
    return without_oom(lambda: _train_pass(model, loader, loss_fn, optimizer, runtime, scaler, on_batch))


def _train_pass(model, loader, loss_fn, optimizer, runtime: Runtime, scaler, on_batch) -> float:
    """train_one_epoch's loop.

    The loss is summed on the device and read once at the end: reading it every step
    would make the host wait for the device at every batch. A NaN or infinite loss
    poisons the sum (and, through its gradients, the weights), so divergence is still
    caught, at the end of the epoch it happens in.
    """
    total = torch.zeros((), device=runtime.device)
    count = 0
    for inputs, targets in loader:
        inputs, targets = to_device((inputs, targets), runtime)
        with runtime.autocast():
            loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            # No gradient clipping here: with clipping, scaler.unscale_(optimizer) would have
            # to come first, or the clip would act on fp16-scaled gradients.
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach().float() * len(inputs)
        count += len(inputs)
        if on_batch is not None:
            on_batch(len(inputs))
    mean = total.item() / max(count, 1)
    if not math.isfinite(mean):
        raise Diverged(f"training loss became {mean}")
    return mean


@dataclass(frozen=True)
class Evaluation:
    metric: float
    loss: float


def evaluate(model, loader, loss_fn, runtime: Runtime, multilabel: bool) -> Evaluation:
    """Validation metric: accuracy (single-label) or macro F1 at threshold 0.5 (multi-label).

    Raises OutOfMemory: another trial sharing the GPU can take the room between training and evaluation.
    """
    return without_oom(lambda: _evaluate(model, loader, loss_fn, runtime, multilabel))


@torch.no_grad()
def _evaluate(model, loader, loss_fn, runtime: Runtime, multilabel: bool) -> Evaluation:
    model.eval()
    # Summed and gathered on the device, read once: no host-device wait per batch.
    total_loss, count = torch.zeros((), device=runtime.device), 0
    outputs, truths = [], []
    for inputs, targets in loader:
        inputs, targets = to_device((inputs, targets), runtime)
        with runtime.autocast():
            logits = model(inputs)
            loss = loss_fn(logits, targets)
        total_loss += loss.float() * len(inputs)
        count += len(inputs)
        outputs.append(logits.float())
        truths.append(targets)
    logits, truth = torch.cat(outputs).cpu(), torch.cat(truths).cpu()
    metric = macro_f1(logits, truth) if multilabel else accuracy(logits, truth)
    return Evaluation(metric=metric, loss=total_loss.item() / max(count, 1))


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(1) == targets).float().mean().item()


def macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes of F1 at probability 0.5; a class absent and never predicted counts 1."""
    predicted = logits > 0
    truth = targets > 0.5
    tp = (predicted & truth).sum(0).float()
    fp = (predicted & ~truth).sum(0).float()
    fn = (~predicted & truth).sum(0).float()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(tp))
    return f1.mean().item()


class EarlyStopping:
    """Stops after `patience` epochs without improvement of a maximised metric."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise TunerError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, metric: float, epoch: int) -> bool:
        """Record an epoch's metric; True when it is a new best."""
        if self.best is None or metric > self.best:
            self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
