"""The frozen-backbone feature cache: same results as the uncached path, shared across workers."""

from __future__ import annotations

import optuna
import pytest
import torch

from tuner.data import AugmentConfig, DataConfig, ImageData, load_data
from tuner.features import FeatureCache, FeatureCacheConfig, extract
from tuner.models import ModelSpec, build_model
from tuner.objective import Objective, TrialSettings
from tuner.space import parse_space
from tuner.training import make_runtime

HEAD_SPACE = """\
params:
  freeze: {type: fixed, value: head}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  optimizer: {type: categorical, choices: [adam, sgd]}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: 3}
  dropout: {type: float, low: 0.3, high: 0.5}
  AUG
"""


@pytest.fixture(scope="module")
def digits():
    """A slice of digits: enough to train on, small enough to keep these tests quick."""
    full = load_data(DataConfig("digits", 16))
    return ImageData(
        train_images=full.train_images[:320], train_targets=full.train_targets[:320],
        val_images=full.val_images[:100], val_targets=full.val_targets[:100],
        classes=full.classes, multilabel=False, skipped=0,
    )


def run_trials(data, cache_views, cache_dir, aug="", n=2):
    space = parse_space(HEAD_SPACE.replace("AUG", aug), source="head.yaml", name="head")
    settings = TrialSettings(model="resnet18", weights="none", image_size=16, device="cpu", seed=3,
                             cache_views=cache_views, cache_dir=str(cache_dir))
    objective = Objective(space, data, settings)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n)
    return study.trials


def test_cached_training_matches_the_uncached_path(digits, tmp_path):
    # No random augmentation: one view, which is exactly what the uncached path computes.
    cached = run_trials(digits, 1, tmp_path / "cache")
    uncached = run_trials(digits, 0, tmp_path / "unused")
    for with_cache, without in zip(cached, uncached):
        assert with_cache.user_attrs["feature_cache"] is True and without.user_attrs["feature_cache"] is False
        assert with_cache.params == without.params
        for epoch, value in without.intermediate_values.items():
            assert with_cache.intermediate_values[epoch] == pytest.approx(value, abs=1e-6)
        for a, b in zip(with_cache.user_attrs["history"], without.user_attrs["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_cached_views_are_the_backbone_on_the_same_augmented_views(digits, tmp_path):
    runtime = make_runtime(torch.device("cpu"))
    torch.manual_seed(0)
    built = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    aug = AugmentConfig(crop_scale=0.7, hflip=0.5)
    cache = FeatureCache(FeatureCacheConfig(tmp_path, views=2), runtime)
    features = cache.get(built, "resnet18", digits, 16, aug)
    assert len(features.train_views) == 2
    assert not torch.equal(features.train_views[0], features.train_views[1])  # two different views
    # Recompute view 1 the way the cache seeds it: identical tensors.
    from tuner.batches import train_transform

    key = next(iter(cache.memory))
    torch.manual_seed(int(key[:8], 16) + 1)
    again = extract(built, digits.train_images, train_transform(aug, built.mean, built.std), runtime)
    assert torch.allclose(again, features.train_views[1], atol=1e-6)
    assert features.val.shape == (len(digits.val_images), 512)


def test_a_second_process_loads_the_cache_from_disk(digits, tmp_path):
    runtime = make_runtime(torch.device("cpu"))
    torch.manual_seed(0)
    built = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    aug = AugmentConfig()
    first = FeatureCache(FeatureCacheConfig(tmp_path, views=4), runtime).get(built, "resnet18", digits, 16, aug)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and len(first.train_views) == 1  # no random augmentation: one view
    # A fresh cache object (another worker) finds the file: same tensors, without extraction.
    stamp = files[0].stat().st_mtime_ns
    second = FeatureCache(FeatureCacheConfig(tmp_path, views=4), runtime).get(built, "resnet18", digits, 16, aug)
    assert torch.equal(first.train_views[0], second.train_views[0]) and torch.equal(first.val, second.val)
    assert files[0].stat().st_mtime_ns == stamp
    # Another backbone (a different seed for --weights none) gets its own entry.
    torch.manual_seed(1)
    other = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    FeatureCache(FeatureCacheConfig(tmp_path, views=4), runtime).get(other, "resnet18", digits, 16, aug)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_head_trials_share_one_cache_entry_across_trials(digits, tmp_path):
    trials = run_trials(digits, 2, tmp_path / "cache", aug="aug_hflip: {type: fixed, value: 0.5}", n=3)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_cache_views_must_be_positive(tmp_path):
    from tuner.errors import TunerError

    with pytest.raises(TunerError, match="--cache-views must be >= 1, got 0"):
        FeatureCacheConfig(tmp_path, views=0)
