"""GPU-path defects a CPU can show: memory kept after a pruned trial, out of memory in the probe,
the precision a GPU without native bf16 gets, the probe's loss scaling, allocation failures
taken for out of memory, digests that never copy the whole data set, and the inference layout.

bench/gpu_check.py runs the same checks (and those only a GPU can show) on a lent GPU.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import tracemalloc
import uuid

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from torch import nn

from tuner.progress import Progress
from tuner.cli import cli
from tuner.cli._options import machine_options, storage_settings, study_request
from tuner.search._objective import make_objective
from tuner.service._prepare import prepare_study
from tuner.service._worker import Worker
from tuner.space._space import parse_space
from tuner.shipping._inference import Runner
from tuner.shipping._model_folder import write_folder
from tuner.training._augment import AugmentConfig
from tuner.training._data import ImageData
from tuner.training._features import FeatureCache, FeatureCacheConfig, tensor_digest
from tuner.training._loop import Runtime, make_runtime, oom_message
from tuner.training._models import BuiltModel, ModelSpec, build_model
from tuner.training._probe import probe_head
from tuner.training._settings import TrialSettings

pytestmark = pytest.mark.filterwarnings("ignore::tuner.training._data.DataWarning")

# Models a user could name as MODULE:FUNCTION; each records a weak reference to every network it builds.
USER_MODULE = '''\
import weakref

import torch
from torch import nn

BUILT = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class Diverging(Net):
    def forward(self, x):
        return super().forward(x) * float("nan")


class OutOfMemoryInEval(Net):
    """Runs out of memory in a no-grad eval pass (the way feature extraction runs the backbone)."""

    def forward(self, x):
        if not torch.is_grad_enabled() and not self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def _built(net):
    BUILT.append(weakref.ref(net))
    return net


def diverging(pretrained):
    return _built(Diverging())


def oom_in_eval(pretrained):
    return _built(OutOfMemoryInEval())
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"gpunet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield name
    sys.modules.pop(name, None)


def tiny_data(n: int = 24, n_val: int = 12) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n + n_val, 3, 16, 16), dtype=torch.uint8, generator=generator)
    targets = torch.arange(n + n_val) % 2
    return ImageData(images[:n], targets[:n], images[n:], targets[n:], ("a", "b"), False, 0)


def fixed_space(**params) -> object:
    values = {"lr": 0.001, "epochs": 1, "batch_size": 8, **params}
    body = "".join(f"  {name}: {{type: fixed, value: {value}}}\n" for name, value in values.items())
    return parse_space("params:\n" + body, source="gpu.yaml", name="gpu")


# --- memory kept after a pruned trial -----------------------------------------------------------

def test_a_worker_keeps_nothing_of_a_pruned_trial(user_module, tmp_path):
    """The worker (still alive, as while it waits for others) holds no reference to the model
    of a trial that diverged: it once kept the raised error, whose traceback held the run."""
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  freeze: {type: fixed, value: full}\n  lr: {type: fixed, value: 0.001}\n"
                     "  epochs: {type: fixed, value: 1}\n  batch_size: {type: fixed, value: 64}\n")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    created = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--space", str(space),
                                       "--data", "digits", "--image-size", "16", "--weights", "none",
                                       "--model", f"{user_module}:diverging", "--n-trials", "1",
                                       "--cache-views", "0", "--no-warm-start"])
    assert created.exit_code == 0, created.output
    ctx = cli.commands["run"].make_context("run", ["--study", "s", "--storage", url, "--device", "cpu", "--quiet"])
    opened = prepare_study(storage_settings(ctx.params), "s", study_request(ctx, ctx.params), machine_options(ctx.params))
    worker = Worker(opened)
    worker.run()

    (trial,) = worker.study.trials
    assert (trial.state, trial.user_attrs["stop_reason"]) == (TrialState.PRUNED, "diverged")
    gc.collect()
    built = sys.modules[user_module].BUILT
    assert built and all(model() is None for model in built)


# --- out of memory in the probe's feature extraction -------------------------------------------

@pytest.mark.parametrize("cache_views", [0, 1], ids=["no cache", "feature cache"])
def test_out_of_memory_in_the_probe_prunes_the_trial_as_oom(user_module, tmp_path, cache_views):
    settings = TrialSettings(model=f"{user_module}:oom_in_eval", weights="none", image_size=16, device="cpu",
                             cache_views=cache_views, cache_dir=str(tmp_path / "features"))
    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(fixed_space(freeze="full", head_init="probe"), tiny_data(), settings), n_trials=1)
    (trial,) = study.trials
    assert (trial.state, trial.user_attrs["stop_reason"]) == (TrialState.PRUNED, "oom")
    assert "probe" not in trial.user_attrs


# --- precision ----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_a_gpu_with_emulated_bf16_only_trains_in_fp16_with_a_grad_scaler(monkeypatch):
    # A V100 or T4: bf16 "supported" only by emulation (torch's answer when emulation counts).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    runtime = make_runtime(torch.device("cuda"))
    assert runtime.amp_dtype == torch.float16
    assert isinstance(runtime.grad_scaler(), torch.amp.GradScaler)


def test_the_probe_scales_its_fp16_loss_so_small_gradients_do_not_underflow():
    """Features so small that the head's weight gradients underflow in fp16 unless the loss is scaled."""
    torch.manual_seed(0)
    head = nn.Linear(8, 2)
    initial = head.weight.detach().clone()
    features = torch.full((64, 8), 6e-8)  # fp16's smallest subnormal: the gradients are ~1e-8
    targets = torch.arange(64) % 2
    runtime = Runtime(torch.device("cpu"), amp_dtype=torch.float16)
    built = BuiltModel(model=head, head=head, head_name="", mean=(0.5,) * 3, std=(0.5,) * 3, on_features=head)
    probe_head(built, (features, targets), (features[:8], targets[:8]), nn.CrossEntropyLoss(), runtime,
               batch_size=16, seed=0, multilabel=False)
    # Without gradients AdamW would only decay the weights: a change along the initial weights.
    steps = 20 * 4
    decayed = initial * (1 - 1e-3 * 0.01) ** steps
    assert (head.weight.detach() - decayed).abs().max() > 1e-3


# --- allocation failures ------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "expected"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore"),
     "CUDA out of memory. Tried to allocate 20.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 8 bytes"), "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
                                                    "can't allocate memory: you tried to allocate 8 bytes"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
     "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
     "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
     "CUDA error: out of memory"),
    (RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"), "cuFFT error: CUFFT_ALLOC_FAILED"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 4x2)"), None),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), None),
    (RuntimeError("CUDA error: device-side assert triggered"), None),
    (ValueError("can't allocate memory"), None),
], ids=["torch oom", "cpu allocator", "cublas", "cudnn 8", "cudnn 9", "cuda call", "cufft", "shapes",
        "cudnn not supported", "device assert", "not a runtime error"])
def test_oom_message_knows_every_allocation_failure(error, expected):
    assert oom_message(error) == expected


# --- digests ------------------------------------------------------------------------------------

def whole_tensor_digest(*tensors: torch.Tensor) -> str:
    """The reference: every tensor's shape, then all its bytes at once."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_the_data_digest_is_the_whole_tensors_and_never_copies_it(tmp_path):
    path = tmp_path / "images.bin"
    count = 64 * 2**20 // (3 * 64 * 64)
    mapped = torch.from_file(str(path), shared=True, size=count * 3 * 64 * 64, dtype=torch.uint8)
    mapped = mapped.view(count, 3, 64, 64)
    mapped[::7] = 200
    small = [torch.tensor(3.0), torch.zeros(0, 4), torch.arange(12.0).view(3, 4).t(), torch.tensor([True, False])]
    assert tensor_digest(*small) == whole_tensor_digest(*small)

    tracemalloc.start()
    digest = tensor_digest(mapped)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated to hash a 64 MiB data set"
    assert digest == whole_tensor_digest(mapped)


def test_the_backbone_is_digested_once_per_weights_source(tmp_path):
    """Two trials' backbones of one source share the first's digest: the second's weights are
    not read again (from the GPU, on a GPU); another source gets its own."""
    data = tiny_data()
    cache = FeatureCache(FeatureCacheConfig(tmp_path, views=1), Runtime(torch.device("cpu")))
    torch.manual_seed(0)
    first = build_model(ModelSpec("resnet18", weights="none", num_classes=2))
    source = ("resnet18", "none", 0)
    features = cache.get(first, "resnet18", data, 16, AugmentConfig(), source=source)
    torch.manual_seed(0)
    second = build_model(ModelSpec("resnet18", weights="none", num_classes=2))
    with torch.no_grad():
        next(second.model.parameters()).add_(1.0)  # were it digested, it would key other features
    assert cache.get(second, "resnet18", data, 16, AugmentConfig(), source=source) is features
    assert list(cache.backbones) == [source]
    assert cache.get(second, "resnet18", data, 16, AugmentConfig(), source=("resnet18", "none", 1)) is not features


# --- inference layout ---------------------------------------------------------------------------

def test_inference_puts_the_model_in_its_inputs_memory_layout(tmp_path):
    built = build_model(ModelSpec(name="resnet18", weights="none", num_classes=2))
    doc = {"model": "resnet18", "kind": "torchvision", "head": built.head_name, "classes": ["a", "b"],
           "task": "single_label", "image_size": 16, "mean": list(built.mean), "std": list(built.std),
           "metric": "val_accuracy", "value": 0.5, "study": "s", "trial": 0}
    write_folder(tmp_path / "model", built.model.state_dict(), doc, torchscript=False)
    runner = Runner(str(tmp_path / "model"), Runtime(torch.device("cpu"), channels_last=True))
    convolutions = [m.weight for m in runner.model.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    probabilities = runner.probabilities(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), Progress())
    assert probabilities.shape == (2, 2)
