"""bench/transfer.py: it runs end to end, counts every epoch, and its pretrained backbone transfers."""

from __future__ import annotations

import gzip
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from tuner.training._data import load_data
from tuner.training._data_config import DataConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(transfer_bench):
    return transfer_bench


def test_reads_idx_files(bench, tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + images.tobytes())
    np.testing.assert_array_equal(bench.read_idx(path), images)


def test_writes_a_stratified_presplit_image_folder(bench, tmp_path):
    root = bench.write_subset(tmp_path / "images", "digits", per_class=3, val_per_class=2)
    for split, count in (("train", 3), ("val", 2)):
        folders = sorted((root / split).iterdir())
        assert [f.name for f in folders] == [str(d) for d in range(10)]
        assert all(len(list(f.glob("*.png"))) == count for f in folders)
    train = {p.name for p in (root / "train").rglob("*.png")}
    assert not train & {p.name for p in (root / "val").rglob("*.png")}
    data = load_data(DataConfig(str(root), 16))
    assert (len(data.train_targets), len(data.val_targets)) == (30, 20)


class FakeTrial:
    def __init__(self, number: int, lineage: int | None = None) -> None:
        self.number = number
        self.user_attrs = {} if lineage is None else {"lineage": lineage}


def test_ledger_counts_pruned_epochs_and_stops_at_the_budget(bench):
    ledger = bench.EpochLedger(budget=6, epoch_seconds=4.0)
    trials = [FakeTrial(0), FakeTrial(1), FakeTrial(2)]
    for trial, metric in ((trials[0], 0.5), (trials[0], 0.6), (trials[1], 0.9), (trials[1], 0.95), (trials[2], 0.7)):
        ledger.on_epoch(trial, 0, 0, metric)
    with pytest.raises(bench.BudgetSpent):
        ledger.on_epoch(trials[2], 0, 0, 0.8)
    # Trial 0 completed (value 0.6), trial 1 was pruned (its 0.95 never counts), trial 2 was
    # cut by the budget and counts with its best epoch so far.
    trace = ledger.trace("m", 0, {0: 0.6, 1: None})
    assert trace.spent == 6
    assert math.isnan(trace.best[0])
    assert trace.best[1:] == [0.6, 0.6, 0.6, 0.6, 0.8]
    assert trace.reach(0.6)[0] == 2 and trace.reach(0.8)[0] == 6 and trace.reach(0.9) is None


def test_ledger_follows_a_continued_trial_by_its_lineage(bench):
    ledger = bench.EpochLedger(budget=10, epoch_seconds=4.0)
    ledger.on_epoch(FakeTrial(0), 1, 3, 0.4)  # screening round, trial 0
    ledger.on_epoch(FakeTrial(1), 1, 3, 0.5)  # screening round, trial 1
    ledger.on_epoch(FakeTrial(0, lineage=1), 2, 3, 0.7)  # trial 1 continued as a new trial
    trace = ledger.trace("topk", 0, {0: None, 1: 0.7})
    assert trace.trials == 2 and trace.best[2] == 0.7 and math.isnan(trace.best[1])


def test_recipes_are_complete_configurations_of_the_default_space(bench):
    from tuner.space._space import load_space

    space = load_space("default")
    recipes = bench.recipe_params(space)
    assert [r["freeze"] for r in recipes] == ["head", "last_blocks", "full"]
    for params in recipes:
        trial = optuna.trial.FixedTrial(params)
        space.sample(trial, {"task": "single_label"})  # raises if the recipe leaves a parameter open


def test_pretrained_head_beats_random_head(bench, tmp_path):
    """The bench's sanity check at a small scale: digits at 32 px, the bundled ImageNet Lite0."""
    data = load_data(DataConfig("digits", 32))
    config = bench.BenchConfig(model="efficientnet_lite0", image_size=32, sanity_epochs=5, cache_views=1)
    pretrained, scratch = bench.sanity_check(data, config, tmp_path)
    assert pretrained - scratch >= 0.10, (pretrained, scratch)


def test_smoke_run_prints_every_ratio_and_draws_the_curves(tmp_path):
    png = tmp_path / "curves.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "transfer.py"), "--smoke", "--data", "digits", "--threads", "1",
         "--out", str(png)],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for start in ("RATIO (c1)", "RATIO (c2)", "SANITY", "RATIO (b')", "RATIO (a')", "RATIO (a'')"):
        assert any(line.startswith(start) for line in lines), (start, result.stdout)
    for start in ("RATIO (c3)", "TARGET (final)", "TARGET (25%)"):
        assert any(line.startswith(start) for line in lines), (start, result.stdout)
    for method in ("tuner", "random", "optuna", "topk", "recipes", "optuna+recipes"):
        assert any(line.split()[:1] == [method] for line in lines), (method, result.stdout)
    # Methods pay for their feature cache's backbone passes: these three start with a head-only recipe.
    for method in ("tuner", "recipes", "optuna+recipes"):
        (row,) = [line for line in lines if line.split()[:1] == [method]]
        charged = re.search(r"caches (\d+\.\d+) epochs \((\d+\.\d+) s\)", row)
        # The epochs are the seconds over the task's epoch: on a fast machine the seconds of a
        # smoke run's tiny cache round to 0.00 before the epochs do.
        assert charged and float(charged.group(1)) > 0, row
    # top-K's best screened trials continue from their epoch-1 checkpoint, not from scratch.
    assert re.search(r"topk .*\d+ screened, [1-9]\d* continued from epoch 1", result.stdout), result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gradual_ablation_space_is_default_yaml_plus_gradual_unfreezing():
    from tuner.space._space import load_space

    default, gradual = load_space("default"), load_space(str(ROOT / "bench" / "spaces" / "gradual.yaml"))
    assert set(gradual.params) - set(default.params) == {"unfreeze_every"}
    study = optuna.create_study()
    study.enqueue_trial({"freeze": "gradual"})
    sampled = gradual.sample(study.ask(), {})
    # A gradual trial gets every setting a fine-tuning trial of last_blocks gets, and its pace.
    assert {"unfreeze_every", "head_init", "lr", "backbone_lr", "epochs"} <= set(sampled), sampled
    assert sampled["freeze"] == "gradual" and 1 <= sampled["unfreeze_every"] <= 3


@pytest.mark.parametrize("flags, given", [
    ([], {"rung_signal": "last", "rung_margin": 0}),
    (["--tuner-rung-signal", "best", "--tuner-rung-margin", "2"], {"rung_signal": "best", "rung_margin": 2}),
])
def test_the_rung_flags_reach_tuners_study(bench, tmp_path, monkeypatch, flags, given):
    asked = []

    def prepare_study(storage, name, request, machine):
        asked.append(request)
        raise RuntimeError("stop before training")

    monkeypatch.setitem(bench.METHODS["tuner"].__globals__, "prepare_study", prepare_study)
    config = bench.parse_args(["--task", "digits", "--smoke", *flags])
    ctx = bench.Context(config, tmp_path / "data", None, None, tmp_path / "work", 1.0)
    with pytest.raises(RuntimeError, match="stop before training"):
        bench.METHODS["tuner"](ctx, 0)
    assert {k: asked[0].given[k] for k in given} == given
