"""The frozen-backbone feature cache: same results as the uncached path, shared across workers."""

from __future__ import annotations

import optuna
import pytest
import torch
import torchvision
from torchvision.transforms import v2

from tuner.training._augment import AugmentConfig
from tuner.training._data import ImageData, load_data
from tuner.training._data_config import DataConfig
from tuner.training._features import FeatureCache, FeatureCacheConfig
from tuner.training._models import ModelSpec, build_model
from tuner.search._objective import make_objective
from tuner.training._settings import TrialSettings
from tuner.space._space import parse_space
from tuner.training._loop import make_runtime

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
    objective = make_objective(space, data, settings)
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


def test_a_view_is_the_frozen_backbone_on_the_augmented_images(digits, tmp_path):
    runtime = make_runtime(torch.device("cpu"))
    built = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    # hflip 1.0 is random augmentation to the cache (several views) but flips every image.
    features = FeatureCache(FeatureCacheConfig(tmp_path, views=2), runtime).get(
        built, "resnet18", digits, 16, AugmentConfig(hflip=1.0))
    # Expected, independently: torchvision's resnet18 with the same weights, its classifier
    # removed, in eval mode, on flipped and normalized images.
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    backbone.load_state_dict({k: v for k, v in built.model.state_dict().items() if not k.startswith("fc.")})
    backbone.eval()
    normalize = v2.Normalize(built.mean, built.std)
    with torch.no_grad():
        flipped = backbone(normalize(digits.train_images.flip(-1).float() / 255))
        plain = backbone(normalize(digits.val_images.float() / 255))
    assert len(features.train_views) == 2
    for view in features.train_views:
        assert torch.allclose(view, flipped, atol=1e-5)
    assert torch.allclose(features.val, plain, atol=1e-5)  # validation images are never augmented


def test_views_are_the_same_whichever_worker_computes_them(digits, tmp_path):
    runtime = make_runtime(torch.device("cpu"))
    built = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    aug = AugmentConfig(crop_scale=0.7, hflip=0.5)
    computed = []
    for worker, global_seed in enumerate((0, 12345)):  # two workers, in different RNG states
        torch.manual_seed(global_seed)
        cache = FeatureCache(FeatureCacheConfig(tmp_path / f"worker{worker}", views=2), runtime)
        computed.append(cache.get(built, "resnet18", digits, 16, aug))
    first, second = computed
    assert not torch.equal(first.train_views[0], first.train_views[1])  # two different views
    for a, b in zip(first.train_views, second.train_views):
        assert torch.equal(a, b)


def test_new_data_where_old_data_was_freed_gets_its_own_features(tmp_path):
    """CPython reuses a freed object's id for the next one: the digest must follow the pixels."""
    cache = FeatureCache(FeatureCacheConfig(tmp_path), make_runtime(torch.device("cpu")))

    def data(seed: int) -> ImageData:
        images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        return ImageData(images, torch.zeros(4, dtype=torch.long), images, torch.zeros(4, dtype=torch.long),
                         ("a",), False, 0)

    old = data(0)
    old_digest, old_id = cache.data_digest(old), id(old)
    del old
    for seed in range(1, 20):
        new = data(seed)
        if id(new) == old_id:
            break  # the case that went wrong: same id, other pixels
    fresh = FeatureCache(FeatureCacheConfig(tmp_path), make_runtime(torch.device("cpu")))
    assert cache.data_digest(new) == fresh.data_digest(new) != old_digest


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


def test_the_cache_counts_the_seconds_it_spends_computing_features(digits, tmp_path):
    """compute_seconds: the backbone passes this object paid for, so that a budget can charge them."""
    runtime = make_runtime(torch.device("cpu"))
    built = build_model(ModelSpec("resnet18", weights="none", num_classes=10))
    aug = AugmentConfig(hflip=0.5)
    cache = FeatureCache(FeatureCacheConfig(tmp_path, views=2), runtime)
    assert cache.compute_seconds == 0
    cache.get(built, "resnet18", digits, 16, aug)
    spent = cache.compute_seconds
    assert spent > 0
    cache.get(built, "resnet18", digits, 16, aug)  # from memory: nothing computed
    assert cache.compute_seconds == spent
    other = FeatureCache(FeatureCacheConfig(tmp_path, views=2), runtime)
    other.get(built, "resnet18", digits, 16, aug)  # another worker loads the file: nothing computed
    assert other.compute_seconds == 0
    cache.get(built, "resnet18", digits, 16, AugmentConfig())  # a new entry: its passes add up
    assert cache.compute_seconds > spent
