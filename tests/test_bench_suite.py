"""bench/transfer.py's task suite, its optuna+recipes baseline, and its honest accounting of probes and caches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.service._lifecycle import check_params
from tuner.space._space import load_space
from tuner.training._hyperparams import check_space

TOPS = ("t-shirt", "pullover", "coat", "shirt")


@pytest.fixture(scope="module")
def bench(transfer_bench):
    return transfer_bench


# --- the tasks ---------------------------------------------------------------------------------

def test_the_suite_has_the_five_tasks_of_the_issue(bench):
    tasks = bench.TASKS
    assert list(tasks) == ["fashion", "fewshot", "large", "confusable", "digits"]
    assert (tasks["fashion"].classes, tasks["fashion"].per_class, tasks["fashion"].val_per_class,
            tasks["fashion"].image_size) == (None, 50, 50, 32)
    assert tasks["fewshot"].per_class <= 15 and tasks["fewshot"].val_per_class >= 30
    assert tasks["large"].per_class >= 300 and tasks["large"].image_size >= 48
    assert tasks["confusable"].classes == TOPS
    assert tasks["digits"].data == "digits"
    assert len({task.data_seed for task in tasks.values()}) == len(tasks)  # no two tasks draw alike


def build(bench, task, root: Path) -> dict[str, bytes]:
    bench.write_subset(root, task.data, task.per_class, task.val_per_class, seed=task.data_seed,
                       classes=task.classes)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("name", ["fashion", "fewshot", "large", "confusable", "digits"])
def test_a_task_builds_the_same_files_from_its_seed_with_the_counts_asked_for(bench, tmp_path, name):
    task = bench.TASKS[name]
    if task.data == "fashion" and not bench.fashion_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)")
    first, second = build(bench, task, tmp_path / "a"), build(bench, task, tmp_path / "b")
    assert first == second  # same names, same bytes
    classes = task.classes or bench.source_images(task.data)[2]
    for split, count in (("train", task.per_class), ("val", task.val_per_class)):
        folders = sorted((tmp_path / "a" / split).iterdir())
        assert sorted(f.name for f in folders) == sorted(classes)
        assert all(len(list(f.glob("*.png"))) == count for f in folders), split
    train = {Path(p).name for p in first if p.startswith("train")}
    assert not train & {Path(p).name for p in first if p.startswith("val")}


def test_another_data_seed_draws_other_images(bench, tmp_path):
    one = build(bench, bench.TASKS["digits"], tmp_path / "a")
    other = build(bench, bench.replace(bench.TASKS["digits"], data_seed=99), tmp_path / "b")
    assert set(one) != set(other)


def test_a_task_sets_the_run_and_flags_override_it(bench):
    large = bench.parse_args(["--task", "large"])
    task = bench.TASKS["large"]
    assert (large.task, large.classes, large.per_class, large.image_size, large.budget_epochs, large.max_epochs,
            large.data_seed) == ("large", task.classes, task.per_class, task.image_size, task.budget_epochs,
                                 task.max_epochs, task.data_seed)
    assert bench.parse_args(["--task", "large", "--per-class", "7", "--budget-epochs", "3"]).per_class == 7
    quick = bench.parse_args(["--task", "large", "--quick"])
    assert (quick.per_class, quick.image_size, quick.budget_epochs, quick.seeds) == (20, task.image_size, 20, 2)
    smoke = bench.parse_args(["--smoke", "--data", "digits"])  # the smoke test's command line
    assert (smoke.data, smoke.per_class, smoke.budget_epochs) == ("digits", 2, 6)
    suite = bench.parse_invocation(["--suite", "--save", "out/r.json"])
    assert [c.task for c in suite.configs] == list(bench.TASKS)
    assert [c.save for c in suite.configs][:2] == ["out/r-fashion.json", "out/r-fewshot.json"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--task", "confusable", "--data", "digits"])  # digits has no coats


# --- optuna+recipes -----------------------------------------------------------------------------

def enqueued(study: optuna.Study) -> list[dict]:
    return [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]


def test_optuna_recipes_enqueues_three_complete_configurations_that_pass_the_space_check(bench):
    space = load_space("default")
    check_space(space)
    study = bench.optuna_recipes_study(space, seed=3)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    recipes = enqueued(study)
    assert [r["freeze"] for r in recipes] == ["head", "last_blocks", "full"]
    for params in recipes:
        # What `tuner enqueue` checks; every value is given, none left to the sampler.
        assert check_params(space, params, "single_label", "recipe", max_epochs=8) == params


def active_params(space, values: dict) -> set[str]:
    """The parameters a trial of `space` with these values samples (fixed and inactive ones aside)."""
    seen: dict = {"task": "single_label"}
    active = set()
    for name in space.params:
        branch = space.active_branch(name, {**seen, **values})
        if branch is None:
            continue
        seen[name] = branch.value if branch.fixed else values.get(name)
        if not branch.fixed:
            active.add(name)
    return active


def test_a_completed_recipe_has_every_active_parameter_at_the_seeds_advice(bench):
    space = load_space("default")
    for params in enqueued(bench.optuna_recipes_study(space, seed=0)):
        assert set(params) == active_params(space, params), params["freeze"]
        assert (params["optimizer"], params["weight_decay"], params["batch_size"], params["dropout"]) == (
            "adamw", 1e-4, 32, 0.4)
        assert (params["scheduler"], params["plateau_factor"], params["plateau_patience"]) == ("plateau", 0.1, 3)
        assert (params["aug_hflip"], params["aug_rotation"], params["aug_color_jitter"], params["aug_crop_scale"]) == (
            0.5, 0, 0.0, 1.0)
        assert params.get("head_init", "random") == "random"
        epochs = space.active_branch("epochs", params)
        assert params["epochs"] == epochs.high  # the top of the seed's range for that strategy


def test_optuna_recipes_is_a_method_of_the_bench(bench):
    assert "optuna+recipes" in bench.METHODS and "optuna+recipes" in bench.ALL_METHODS
    assert bench.parse_args([]).methods == bench.ALL_METHODS


# --- the ledger's charges ------------------------------------------------------------------------

class FakeTrial:
    def __init__(self, number: int, probe: dict | None = None) -> None:
        self.number = number
        self.user_attrs = {} if probe is None else {"probe": probe}


class FakeCache:
    compute_seconds = 0.0


def test_the_ledger_charges_probes_and_cache_passes_as_fractions_of_an_epoch(bench):
    ledger = bench.EpochLedger(budget=5, epoch_seconds=2.0)
    cache = ledger.cache = FakeCache()
    probe = {"epochs": 20, "seconds": 0.8, "val_metric": 0.5, "extract_seconds": 0.2, "trial": 0}
    cache.compute_seconds = 1.0  # the head-only features computed before trial 0's first epoch
    ledger.on_epoch(FakeTrial(0, probe), 1, 2, 0.5)  # 1 + (0.8 + 0.2 probe + 1.0 cache) / 2
    ledger.on_epoch(FakeTrial(0, probe), 2, 2, 0.6)  # nothing new: 1
    ledger.on_epoch(FakeTrial(1, probe), 1, 2, 0.4)  # a retry carrying trial 0's probe: not charged twice
    cache.compute_seconds = 1.5
    with pytest.raises(bench.BudgetSpent):
        ledger.on_epoch(FakeTrial(2), 1, 2, 0.7)  # 1 + 0.5 / 2: 5.25 >= 5
    assert [e.spent for e in ledger.events] == pytest.approx([2.0, 3.0, 4.0, 5.25])


def test_a_trace_counts_fractional_epochs(bench):
    ledger = bench.EpochLedger(budget=10, epoch_seconds=4.0)
    ledger.cache = FakeCache()
    probe = {"epochs": 20, "seconds": 3.2, "val_metric": 0.5, "trial": 0}  # an older attr: no extract_seconds
    ledger.on_epoch(FakeTrial(0, probe), 1, 2, 0.5)  # 1.8
    ledger.on_epoch(FakeTrial(0, probe), 2, 2, 0.6)  # 2.8
    ledger.cache.compute_seconds = 2.0
    ledger.on_epoch(FakeTrial(1), 1, 1, 0.9)  # 4.3
    trace = ledger.trace("m", 0, {0: 0.6, 1: 0.9}, val_images=40)
    assert trace.epochs == pytest.approx([1.8, 2.8, 4.3])
    assert (trace.probe_epochs, trace.probe_seconds) == pytest.approx((0.8, 3.2))
    assert (trace.cache_epochs, trace.cache_seconds) == pytest.approx((0.5, 2.0))
    assert math.isnan(trace.best_at(1.7)) and math.isnan(trace.best_at(2.7))
    assert trace.best_at(2.8) == 0.6 and trace.best_at(4.0) == 0.6 and trace.best_at(10) == 0.9
    assert trace.reach(0.9) == (pytest.approx(4.3), trace.seconds[2])
    assert trace.spent == pytest.approx(4.3) and trace.final == 0.9


def test_saved_traces_load_back_and_older_files_are_refused(bench, tmp_path):
    config = bench.parse_args(["--smoke", "--data", "digits"])
    ledger = bench.EpochLedger(budget=4, epoch_seconds=1.0)
    ledger.on_epoch(FakeTrial(0), 1, 1, 0.5)
    path = tmp_path / "run.json"
    bench.save_traces({"random": [ledger.trace("random", 0, {0: 0.5})]}, config, path)
    (loaded,) = bench.load_traces(path, config, skip=())["random"]
    assert loaded.epochs == [1.0] and loaded.best == [0.5]
    older = json.loads(path.read_text())
    del older["format"]
    path.write_text(json.dumps(older))
    with pytest.raises(SystemExit, match="older bench"):
        bench.load_traces(path, config, skip=())


# --- the targets ----------------------------------------------------------------------------------

def trace(bench, method: str, seed: int, points: list[tuple[float, float]], val_images: int = 100):
    """A trace whose best is `value` from `epochs` spent on (epochs, value pairs)."""
    return bench.Trace(method, seed, 20, best=[v for _, v in points], seconds=[float(e) for e, _ in points],
                       epochs=[e for e, _ in points], val_images=val_images)


def test_the_targets_of_a_task(bench):
    config = bench.parse_args(["--budget-epochs", "20"])
    results = {
        "tuner": [trace(bench, "tuner", 0, [(2.5, 0.70), (20, 0.71)])],
        "random": [trace(bench, "random", 0, [(10, 0.60), (20, 0.70)])],
        "optuna": [trace(bench, "optuna", 0, [(20, 0.70)])],
        "optuna+recipes": [trace(bench, "optuna+recipes", 0, [(5, 0.69), (20, 0.72)])],
    }
    targets = {t.label: t for t in bench.task_targets(results, config)}
    assert targets["c1"].met and targets["c1"].figure == "0.125"  # 2.5 of random's 20 epochs
    assert targets["c2"].met
    assert not targets["c3"].met and targets["c3"].figure == "never"
    # 0.71 against 0.72: one validation image of 100 short, which the target allows.
    assert targets["final"].met and targets["final"].figure.startswith("-1.0 img vs optuna+recipes")
    assert targets["25%"].met and targets["25%"].figure == "0.7000 vs 0.6900 (1/1, 1/1)"
    results["tuner"] = [trace(bench, "tuner", 0, [(6, 0.70), (20, 0.705)])]
    targets = {t.label: t for t in bench.task_targets(results, config)}
    assert not targets["final"].met and not targets["25%"].met  # 1.5 images short; nothing at 5 epochs
    assert targets["25%"].figure == "0.0000 vs 0.6900 (0/1, 1/1)"
