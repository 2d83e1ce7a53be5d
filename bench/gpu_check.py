"""(e) GPU check: one tiny trial through every CUDA branch, then tuner's trainer vs a plain fp32 loop.

On one CUDA GPU (an H100/H200 needs well under 5 minutes) it prints a PASS or FAIL line for
each branch of the device path (FAIL with the error), then benchmark (e): resnet50 at 224 px,
tuner's trainer against a plain fp32 loop, target >= 2x images/s, and the same for
EfficientNet-Lite0 where that model is known. Among the branches, those only a GPU can show in
full: the memory of a real worker's pruned trial freed while the worker lives, a real
out-of-memory error in the probe's feature extraction, and fp16 with a GradScaler as a GPU
without native bf16 runs it.

`--cpu-smoke` runs the same code on a CPU with tiny models at 16-32 px: the branches that need
CUDA print SKIP, the others run as they would on the GPU (bf16 and fp16 autocast, the
GradScaler and the out-of-memory path included; the out-of-memory error is then raised by a
forward hook, as CUDA raises it). Its figures mean nothing; it keeps the script from rotting
(tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, make_image_folder, timed  # noqa: E402

import tuner.training._batches  # noqa: E402
from tuner.training._batches import ImageBatches, TensorBatches, place_images, train_transform  # noqa: E402
from tuner.config import MachineOptions  # noqa: E402
from tuner.service._checkpoints import ArtifactCheckpointer  # noqa: E402
from tuner.service._open import open_for_work  # noqa: E402
from tuner.service._storage import StorageSettings  # noqa: E402
from tuner.service._worker import Worker  # noqa: E402
from tuner.training._augment import AugmentConfig  # noqa: E402
from tuner.training._data import ImageData  # noqa: E402
from tuner.training._features import FeatureCache, FeatureCacheConfig  # noqa: E402
from tuner.training._models import ModelSpec, build_model, freeze, set_train_mode  # noqa: E402
from tuner.search._objective import Objective, make_objective  # noqa: E402
from tuner.training._settings import TrialSettings  # noqa: E402
from tuner.space._space import parse_space  # noqa: E402
from tuner.training._hyperparams import Hyperparams  # noqa: E402
from tuner.training._loop import make_optimizer, make_runtime, train_one_epoch  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Setup:
    """What the branches run on: the real GPU, or a CPU smoke run of the same code."""

    device: str  # "cuda" or "cpu"
    smoke: bool
    model: str
    size: int
    folder: Path

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


class Skip(Exception):
    """The branch needs CUDA, which a smoke run lacks (the only reason a branch may skip)."""


class Results:
    def __init__(self) -> None:
        self.counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}

    def run(self, name: str, branch: Callable[[], str | None]) -> None:
        started = time.perf_counter()
        try:
            note = branch()
        except Skip as skip:
            self.line("SKIP", name, str(skip))
            return
        except Exception as error:  # a FAIL line with the error, then on to the next branch
            detail = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]
            self.line("FAIL", name, detail)
            traceback.print_exc(file=sys.stderr)
            return
        self.line("PASS", name, f"{time.perf_counter() - started:.1f} s" + (f"; {note}" if note else ""))

    def line(self, status: str, name: str, detail: str) -> None:
        self.counts[status] += 1
        print(f"{status} {name}: {detail}", flush=True)


# --- one tiny trial -----------------------------------------------------------------------------

def synthetic(n: int, size: int, n_val: int = 32, seed: int = 0) -> ImageData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n + n_val, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 4, (n + n_val,), generator=generator)
    return ImageData(images[:n], targets[:n], images[n:], targets[n:], ("a", "b", "c", "d"), False, 0)


def space(**fixed) -> object:
    params = {"lr": 0.001, "epochs": 1, "batch_size": 16, "backbone_lr": 1e-4, **fixed}
    body = "".join(f"  {name}: {{type: fixed, value: {value}}}\n" for name, value in params.items())
    return parse_space("params:\n" + body, source="gpu_check.yaml", name="gpu_check")


def settings(setup: Setup, **overrides) -> TrialSettings:
    values = {"cache_views": 0, "cache_dir": str(setup.folder / "features"), **overrides}
    return TrialSettings(model=setup.model, weights="none", image_size=setup.size, device=setup.device, **values)


@contextlib.contextmanager
def images_in_host_memory() -> Iterator[None]:
    """place_images keeps the images on the host (pinned per batch) instead of the GPU."""
    share = tuner.training._batches.DEVICE_SHARE
    tuner.training._batches.DEVICE_SHARE = 0.0
    try:
        yield
    finally:
        tuner.training._batches.DEVICE_SHARE = share


def one_trial(objective: Objective, n_trials: int = 1) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=n_trials)
    return study.trials


def completed(trial: optuna.trial.FrozenTrial, **attrs) -> str:
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise AssertionError(f"trial ended {trial.state.name} ({trial.user_attrs.get('stop_reason')})")
    for name, value in attrs.items():
        if trial.user_attrs.get(name) != value:
            raise AssertionError(f"user attr {name} is {trial.user_attrs.get(name)!r}, expected {value!r}")
    return f"value {trial.value:.3f} on {trial.user_attrs['device']}"


def with_precision(objective: Objective, amp: torch.dtype) -> None:
    """The precision make_runtime would pick on another GPU (or on none): the same Runtime the
    trial reads, with the GradScaler that fp16 brings. The feature cache was built with the
    runtime of Objective.__init__, so it is built again: it extracts in the runtime it holds."""
    objective.runtime = replace(objective.runtime, amp_dtype=amp)
    if objective.cache is not None:
        objective.cache = FeatureCache(objective.cache.config, objective.runtime)


def trial_branch(setup: Setup, data: ImageData, *, freeze_: str, cache: bool = False, host: bool = False,
                 amp: torch.dtype | None = None, compile_: bool = False, needs_cuda: bool = False,
                 loader_workers: int | None = None) -> Callable[[], str]:
    def branch() -> str:
        if needs_cuda and not setup.cuda:
            raise Skip("needs CUDA")
        aug = {"aug_hflip": 0.5} if cache else {}
        # A folder of its own: in a shared one (the same seeded weights, the same data) every
        # cache branch would load the features the first one wrote, in its precision.
        cache_dir = Path(tempfile.mkdtemp(prefix="features-", dir=setup.folder))
        trial_settings = settings(setup, cache_views=2 if cache else 0, compile=compile_,
                                  num_workers=loader_workers, cache_dir=str(cache_dir))
        with images_in_host_memory() if host else contextlib.nullcontext():
            objective = make_objective(space(freeze=freeze_, **aug), data, trial_settings)
        where = objective.images.device.type
        if setup.cuda and where != ("cpu" if host else "cuda"):
            raise AssertionError(f"images were placed on {where}")
        if amp is not None:
            with_precision(objective, amp)
        (trial,) = one_trial(objective)
        note = completed(trial, feature_cache=cache, compiled=compile_)
        precision = str(objective.runtime.amp_dtype or torch.float32).removeprefix("torch.")
        note = f"{note}, images on {where}, {precision}"
        if cache:
            note += f", {extracted_here(objective, cache_dir)}"
        return note

    return branch


def extracted_here(objective: Objective, cache_dir: Path) -> str:
    """The features of a cache branch were extracted by this branch, in the trial's precision."""
    if objective.cache.runtime != objective.runtime:
        raise AssertionError(f"features extracted with {objective.cache.runtime}, the trial ran with "
                             f"{objective.runtime}")
    written = list(cache_dir.glob("*.pt"))
    if len(written) != 1:
        raise AssertionError(f"{len(written)} feature files in this branch's cache folder, expected 1")
    precision = str(objective.cache.runtime.amp_dtype or torch.float32).removeprefix("torch.")
    return f"features extracted here in {precision}"


# --- out of memory, two trials per GPU, resume across devices -------------------------------------

class SimulatedOom:
    """On a CPU: CUDA's out-of-memory error from a forward hook, for batches over `limit` images."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, module, args, output):
        if isinstance(module, torch.nn.Linear) and len(args[0]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        handle = torch.nn.modules.module.register_module_forward_hook(self)
        try:
            yield
        finally:
            handle.remove()


def oom_branch(setup: Setup) -> str:
    """A huge batch: the trial ends PRUNED/oom, its memory is freed, and the next trial runs."""
    if setup.cuda:
        # resnet50 at 448 px, one batch of 1536 images: hundreds of GiB of activations.
        data, model, size, huge = synthetic(1536, 448, n_val=16), "resnet50", 448, 1536
        hook = contextlib.nullcontext()
    else:
        data, model, size, huge = synthetic(32, setup.size, n_val=16), setup.model, setup.size, 32
        hook = SimulatedOom(limit=16).installed()
    trial_settings = replace(settings(setup), model=model, image_size=size)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"batch_size": huge})
    study.enqueue_trial({"batch_size": 16})
    huge_space = parse_space(textwrap.dedent(f"""\
        params:
          freeze: {{type: fixed, value: full}}
          lr: {{type: fixed, value: 0.001}}
          epochs: {{type: fixed, value: 1}}
          batch_size: {{type: categorical, choices: [16, {huge}]}}
        """), source="oom.yaml", name="oom")
    objective = make_objective(huge_space, data, trial_settings)
    before = torch.cuda.memory_allocated() if setup.cuda else 0
    with hook:
        study.optimize(objective, n_trials=1)
        after_oom = torch.cuda.memory_allocated() if setup.cuda else 0
        study.optimize(objective, n_trials=1)
    oom, fitting = study.trials
    if (oom.state, oom.user_attrs.get("stop_reason")) != (optuna.trial.TrialState.PRUNED, "oom"):
        raise AssertionError(f"huge batch ended {oom.state.name}/{oom.user_attrs.get('stop_reason')}")
    note = completed(fitting)
    if setup.cuda:
        # What may stay: cuBLAS's workspaces (tens of MiB). A kept model would leave its weights,
        # gradients and optimizer state (about 400 MiB for resnet50), kept activations GiBs.
        leaked = (after_oom - before) / 2**20
        if leaked > 96:
            raise AssertionError(f"{leaked:.0f} MiB still allocated after the OOM trial")
        note += f"; {leaked:.0f} MiB left allocated after the OOM trial"
    return note


def two_per_device_branch(setup: Setup) -> str:
    """`tuner worker --trials-per-gpu 2` (CPU smoke: --processes 2): two trials at once on one device."""
    folder = setup.folder / "two"
    folder.mkdir()
    (folder / "space.yaml").write_text(
        "params:\n  freeze: {type: categorical, choices: [head, full]}\n  lr: {type: float, low: 1.0e-4, "
        "high: 1.0e-2, log: true}\n  epochs: {type: fixed, value: 1}\n  batch_size: {type: fixed, value: 8}\n")
    storage = f"sqlite:///{folder / 'study.db'}"
    images = make_image_folder(folder / "images", classes=2, per_class=12 if setup.smoke else 64, size=setup.size)
    tuner = [sys.executable, "-m", "tuner"]
    common = ["--study", "two", "--storage", storage]
    create = ["create", *common, "--space", str(folder / "space.yaml"), "--data", str(images),
              "--weights", "none", "--model", setup.model, "--image-size", str(setup.size), "--n-trials", "4",
              "--no-warm-start", "--cache-views", "0"]
    placement = ["--trials-per-gpu", "2"] if setup.cuda else ["--processes", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    from tuner.cli import cli

    cli.main(create, standalone_mode=False)  # in this process: one interpreter start less
    run = subprocess.run([*tuner, "worker", *common, *placement, "--quiet"], capture_output=True, text=True,
                         env=env, timeout=180)
    if run.returncode != 0:
        raise AssertionError(f"worker exited {run.returncode}: {run.stderr.strip().splitlines()[-1:]}")
    trials = optuna.load_study(study_name="two", storage=storage).trials
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    workers = {t.user_attrs.get("worker") for t in finished}
    devices = {t.user_attrs.get("device") for t in finished}
    if len(finished) != 4 or len(workers) != 2:
        raise AssertionError(f"{len(finished)} of 4 trials finished, by {len(workers)} worker(s)")
    return f"4 trials by 2 processes on {', '.join(sorted(devices))}"


class Interrupted(Exception):
    """The worker killed right after the epoch-1 checkpoint."""


def stop_after_epoch_1(trial, epoch, epochs, metric) -> None:
    if epoch == 1:
        raise Interrupted


def resume_branch(setup: Setup, data: ImageData) -> str:
    """A checkpoint written on CUDA (epoch 1 of 2), resumed by a CPU worker."""
    from optuna.artifacts import FileSystemArtifactStore

    checkpointer = ArtifactCheckpointer(FileSystemArtifactStore(str(setup.folder)), "resume")
    two_epochs = space(freeze="last_blocks", epochs=2)
    study = optuna.create_study(direction="maximize")
    written = make_objective(two_epochs, data, settings(setup), checkpointer=checkpointer,
                             on_epoch=stop_after_epoch_1)
    study.optimize(written, n_trials=1, catch=(Interrupted,))
    (first,) = study.trials
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=first.params,
                                              distributions=first.distributions, user_attrs=first.user_attrs))
    on_cpu = make_objective(two_epochs, data, replace(settings(setup), device="cpu"), checkpointer=checkpointer)
    study.optimize(on_cpu, n_trials=1)
    resumed = study.trials[1]
    if resumed.user_attrs.get("resumed_from_epoch") != 1:
        raise AssertionError(f"not resumed: {resumed.user_attrs.get('resume_problem', 'no checkpoint found')}")
    return f"written on {first.user_attrs['device']}, resumed on cpu: " + completed(resumed)


# --- memory after a pruned trial, out of memory in the probe, fp16 without native bf16 -----------

# MODULE:FUNCTION models (bench/gpu_check writes them into its folder): each records a weak
# reference to every network it builds, so that a branch can tell whether a trial's model lives on.
USER_MODELS = '''\
import weakref

import torch
from torch import nn

BUILT = []


class Net(nn.Module):
    """A wide layer (WIDTH units; 4096 on CUDA: with its gradients and Adam's state, the 256 MiB
    a kept model would hold)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.wide = nn.Sequential(nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU())
        self.fc = nn.Linear(WIDTH, 1000)

    def forward(self, x):
        return self.fc(self.wide(torch.flatten(self.pool(self.conv(x)), 1)))


class Diverging(Net):
    def forward(self, x):
        return super().forward(x) * float("nan")


class OutOfMemoryInEval(Net):
    """Runs out of memory in a no-grad eval pass, as the probe's feature extraction runs the
    backbone: on CUDA for real (1 TiB asked of the caching allocator), on a CPU by raising
    the error CUDA would."""

    def forward(self, x):
        if not torch.is_grad_enabled() and not self.training:
            if x.is_cuda:
                torch.empty(2**40, dtype=torch.uint8, device=x.device)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")
        return super().forward(x)


def _built(net):
    BUILT.append(weakref.ref(net))
    return net


def diverging(pretrained):
    return _built(Diverging())


def oom_in_eval(pretrained):
    return _built(OutOfMemoryInEval())
'''


def user_models(setup: Setup) -> str:
    """The module of USER_MODELS, importable from the check's folder; its name. Narrow on a CPU
    (a smoke run only needs the code to run), wide on CUDA (a kept model must show in memory)."""
    name = "gpu_check_models"
    path = setup.folder / f"{name}.py"
    if not path.exists():
        path.write_text(USER_MODELS.replace("WIDTH", "4096" if setup.cuda else "64"))
        sys.path.insert(0, str(setup.folder))
    return name


def allocated_mib(setup: Setup) -> float:
    gc.collect()
    return torch.cuda.memory_allocated() / 2**20 if setup.cuda else 0.0


def all_freed(module: str) -> None:
    gc.collect()
    built = sys.modules[module].BUILT
    alive = sum(model() is not None for model in built)
    if not built or alive:
        raise AssertionError(f"{alive} of {len(built)} model(s) built still alive")


def pruned_memory_branch(setup: Setup) -> str:
    """A real worker's diverged (PRUNED) trial: while the worker lives on (as it would while
    waiting for others), the trial's model is gone, and on CUDA so is its memory."""
    module = user_models(setup)
    folder = setup.folder / "pruned"
    folder.mkdir()
    (folder / "space.yaml").write_text("params:\n  freeze: {type: fixed, value: full}\n  lr: {type: fixed, value: "
                                       "0.001}\n  epochs: {type: fixed, value: 1}\n  batch_size: {type: fixed, value: 8}\n")
    images = make_image_folder(folder / "images", classes=2, per_class=12, size=setup.size)
    url = f"sqlite:///{folder / 'study.db'}"
    from tuner.cli import cli

    cli.main(["create", "--study", "pruned", "--storage", url, "--space", str(folder / "space.yaml"), "--data",
              str(images), "--weights", "none", "--model", f"{module}:diverging", "--image-size", str(setup.size),
              "--n-trials", "1", "--no-warm-start", "--cache-views", "0"], standalone_mode=False)
    before = allocated_mib(setup)
    worker = Worker(open_for_work(StorageSettings(url=url), "pruned", MachineOptions(device=setup.device, quiet=True)))
    worker.run()
    (trial,) = worker.study.trials
    if (trial.state, trial.user_attrs.get("stop_reason")) != (optuna.trial.TrialState.PRUNED, "diverged"):
        raise AssertionError(f"trial ended {trial.state.name}/{trial.user_attrs.get('stop_reason')}")
    all_freed(module)
    note = f"PRUNED/diverged on {trial.user_attrs['device']}, its model freed while the worker lives"
    return note + left_allocated(setup, before, "the pruned trial")


def left_allocated(setup: Setup, before: float, after_what: str) -> str:
    """On CUDA, what is still allocated since `before`: images on the GPU (tiny here) and cuBLAS's
    workspaces may stay; a model, its gradients and Adam's state (about 256 MiB) may not."""
    if not setup.cuda:
        return ""
    kept = allocated_mib(setup) - before
    if kept > 96:
        raise AssertionError(f"{kept:.0f} MiB still allocated after {after_what}")
    return f"; {kept:.0f} MiB left allocated"


def probe_oom_branch(setup: Setup, data: ImageData) -> str:
    """Out of memory in the probe's feature extraction (freeze=full, head_init=probe): the trial
    ends PRUNED/oom, its memory is freed, and the next trial of the same objective runs."""
    module = user_models(setup)
    sys.modules.pop(module, None)  # a fresh BUILT list
    probe_space = space(freeze="full", head_init="probe")
    objective = make_objective(probe_space, data, replace(settings(setup), model=f"{module}:oom_in_eval"))
    before = allocated_mib(setup)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    if (trial.state, trial.user_attrs.get("stop_reason")) != (optuna.trial.TrialState.PRUNED, "oom"):
        raise AssertionError(f"probe out of memory ended {trial.state.name}/{trial.user_attrs.get('stop_reason')}")
    all_freed(module)
    note = f"PRUNED/oom on {trial.user_attrs['device']}, model freed"
    note += left_allocated(setup, before, "the probe's out of memory")
    (fitting,) = one_trial(make_objective(probe_space, data, settings(setup)))
    return note + "; next trial: " + completed(fitting)


@contextlib.contextmanager
def emulated_bf16_only() -> Iterator[None]:
    """What a V100 or T4 answers: bf16 only by emulation."""
    supported = torch.cuda.is_bf16_supported
    torch.cuda.is_bf16_supported = lambda including_emulation=True: including_emulation
    try:
        yield
    finally:
        torch.cuda.is_bf16_supported = supported


def fp16_without_bf16_branch(setup: Setup, data: ImageData) -> str:
    """On a GPU without native bf16, make_runtime picks fp16 with a GradScaler (never emulated
    bf16): a probed full fine-tune and a head-only trial on cached features complete in it."""
    if not setup.cuda:
        raise Skip("needs CUDA")
    notes = []
    for name, params, views in (("probe+full", {"freeze": "full", "head_init": "probe"}, 0),
                                ("head cache=on", {"freeze": "head"}, 1)):
        cache_dir = Path(tempfile.mkdtemp(prefix="features-", dir=setup.folder))
        with emulated_bf16_only():
            objective = make_objective(space(**params), data, settings(setup, cache_views=views, cache_dir=str(cache_dir)))
        if objective.runtime.amp_dtype != torch.float16 or objective.runtime.grad_scaler() is None:
            raise AssertionError(f"runtime {objective.runtime} on a GPU without native bf16")
        (trial,) = one_trial(objective)
        notes.append(f"{name}: {completed(trial)}")
    return "float16 + GradScaler; " + "; ".join(notes)


# --- benchmark (e) --------------------------------------------------------------------------------

def images_per_second(step: Callable[[], None], batches: int, batch: int) -> float:
    for _ in range(3):
        step()  # warm-up (cudnn.benchmark picks kernels, AMP caches)
    seconds: dict = {}
    with timed(seconds, "run"):
        for _ in range(batches):
            step()
    return batches * batch / seconds["run"]


def plain_fp32(model_name: str, data: ImageData, device: torch.device, batch: int, batches: int) -> float:
    """The baseline: the same network in fp32, NCHW, tensors already on the device, no augmentation."""
    torch.backends.cudnn.benchmark = False
    model = build_model(ModelSpec(model_name, weights="none", num_classes=10)).model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = data.train_images[:batch].float().div(255).to(device)
    targets = data.train_targets[:batch].to(device)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()

    return images_per_second(step, batches, batch)


def tuner_trainer(model_name: str, data: ImageData, device: torch.device, batch: int) -> float:
    """As a trial trains: AMP, channels_last, cudnn.benchmark, uint8 images augmented on the device."""
    runtime = make_runtime(device)
    built = build_model(ModelSpec(model_name, weights="none", num_classes=10))
    backbone, head = freeze(built, "full")
    model = built.model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(Hyperparams(optimizer="sgd", lr=0.01, momentum=0.9), backbone, head)
    transform = train_transform(AugmentConfig(crop_scale=0.5, hflip=0.5), built.mean, built.std)
    placed = place_images(data, runtime.device).train
    loader = ImageBatches(placed.images, placed.targets, transform, runtime.device, batch, shuffle=True,
                          drop_last=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    set_train_mode(model)
    train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())  # warm-up epoch
    seconds: dict = {}
    with timed(seconds, "epoch"):
        train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())
    return len(loader) * batch / seconds["epoch"]


def feature_cache_speedup(model_name: str, data: ImageData, device: torch.device, size: int, batch: int) -> float:
    runtime = make_runtime(device)
    built = build_model(ModelSpec(model_name, weights="none", num_classes=10))
    freeze(built, "head")
    built.model.to(runtime.device)
    seconds: dict = {}
    with tempfile.TemporaryDirectory() as folder, timed(seconds, "extraction"):
        features = FeatureCache(FeatureCacheConfig(Path(folder), views=1), runtime).get(
            built, model_name, data, size, AugmentConfig())
    loader = TensorBatches((features.view(0), data.train_targets), batch, shuffle=True)
    optimizer = make_optimizer(Hyperparams(lr=1e-3), [], list(built.head.parameters()))
    with timed(seconds, "cached epoch"):
        train_one_epoch(built.head, loader, torch.nn.CrossEntropyLoss(), optimizer, runtime)
    return seconds["extraction"] / seconds["cached epoch"]


def benchmark_branch(setup: Setup, model_name: str, size: int, images: int, batch: int,
                     batches: int) -> Callable[[], str]:
    def branch() -> str:
        # A model tuner cannot build (a missing extra: gpu_check.sh installs .[lite0]) is a
        # FAIL, never a SKIP: the benchmark must not vanish from the output unnoticed.
        device = torch.device(setup.device)
        data = synthetic(images, size, n_val=0)
        data = replace(data, train_targets=data.train_targets % 10)
        plain = plain_fp32(model_name, data, device, batch, batches)
        fast = tuner_trainer(model_name, data, device, batch)
        speedup = feature_cache_speedup(model_name, replace(data, val_images=data.train_images[:batch],
                                                            val_targets=data.train_targets[:batch]),
                                        device, size, batch)
        ratio = fast / plain
        target = "smoke run: figures mean nothing" if setup.smoke else ("MET" if ratio >= 2 else "NOT MET")
        print(f"RATIO (e) {model_name} {size} px: tuner {fast:.0f} / plain fp32 {plain:.0f} images/s = {ratio:.2f}; "
              f"target >= 2 -> {target}; head-only epoch: backbone pass / cached epoch = {speedup:.0f}x", flush=True)
        return f"ratio {ratio:.2f}"

    return branch


# --- all of it ------------------------------------------------------------------------------------

def branches(setup: Setup) -> list[tuple[str, Callable[[], str | None]]]:
    smoke = setup.smoke
    data = synthetic(32, setup.size, n_val=16) if smoke else synthetic(256, setup.size)
    bench_size, bench_images, bench_batch, bench_batches = (32, 32, 16, 1) if smoke else (224, 2048, 128, 20)
    bench_model = setup.model if smoke else "resnet50"
    return [
        ("freeze=head cache=on", trial_branch(setup, data, freeze_="head", cache=True)),
        ("freeze=head cache=off", trial_branch(setup, data, freeze_="head")),
        ("freeze=last_blocks images=device", trial_branch(setup, data, freeze_="last_blocks")),
        ("freeze=full images=device", trial_branch(setup, data, freeze_="full")),
        ("freeze=full images=pinned-host loader=in-process",
         trial_branch(setup, data, freeze_="full", host=True, loader_workers=0, needs_cuda=True)),
        ("freeze=full images=pinned-host loader=2-processes",
         trial_branch(setup, data, freeze_="full", host=True, loader_workers=2, needs_cuda=True)),
        ("freeze=head cache=on images=pinned-host",
         trial_branch(setup, data, freeze_="head", cache=True, host=True, needs_cuda=True)),
        ("amp=bf16 freeze=last_blocks", trial_branch(setup, data, freeze_="last_blocks", amp=torch.bfloat16)),
        ("amp=fp16+GradScaler freeze=full", trial_branch(setup, data, freeze_="full", amp=torch.float16)),
        ("amp=fp16+GradScaler freeze=head cache=on",
         trial_branch(setup, data, freeze_="head", cache=True, amp=torch.float16)),
        # torch.compile on CPU is covered by tests/test_compile.py (tens of seconds to compile).
        ("compile freeze=full", trial_branch(setup, data, freeze_="full", compile_=True, needs_cuda=True)),
        ("compile freeze=head cache=on", trial_branch(setup, data, freeze_="head", cache=True, compile_=True,
                                                      needs_cuda=True)),
        ("oom huge batch -> PRUNED/oom, worker goes on", lambda: oom_branch(setup)),
        ("oom in the probe's feature extraction -> PRUNED/oom", lambda: probe_oom_branch(setup, data)),
        ("pruned trial frees its model while the worker lives", lambda: pruned_memory_branch(setup)),
        ("amp=fp16+GradScaler on a GPU without native bf16", lambda: fp16_without_bf16_branch(setup, data)),
        ("two trials per device", lambda: two_per_device_branch(setup)),
        ("resume across devices (cuda -> cpu)", lambda: resume_branch(setup, data)),
        (f"benchmark (e) {bench_model}", benchmark_branch(setup, bench_model, bench_size, bench_images, bench_batch,
                                                          bench_batches)),
        ("benchmark (e) efficientnet_lite0", benchmark_branch(setup, "efficientnet_lite0", bench_size, bench_images,
                                                              bench_batch, bench_batches)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the same code on the CPU with tiny models; CUDA-only branches SKIP")
    parser.add_argument("--only", help="run only the branches whose name contains this text")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (or --cpu-smoke for a smoke run of the code)", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        torch.set_num_threads(1)  # tiny models: threads only contend (CI boxes have 2 cores)
    results = Results()
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup("cpu" if args.cpu_smoke else "cuda", args.cpu_smoke, "resnet18", 16 if args.cpu_smoke else 64,
                      Path(folder))
        print(f"(e) GPU check on {machine()}{' (CPU smoke run)' if setup.smoke else ''}", flush=True)
        for name, branch in branches(setup):
            if args.only is None or args.only in name:
                results.run(name, branch)
    counts = results.counts
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
