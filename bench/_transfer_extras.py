"""bench/transfer.py's measurements on the backbone itself: the task's fine-tuning epoch, (a'), (a''), (b') and the sanity check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
import yaml

from _common import timed
from tuner.search._objective import make_objective
from tuner.space._space import parse_space
from tuner.training._data import ImageData
from tuner.training._settings import TrialSettings


def finetune_epoch_seconds(data: ImageData, config: Any) -> tuple[float, float, float]:
    """(epoch, train, val) seconds of one full fine-tuning epoch on this task: tuner's trainer
    over the training images (batch 32, AdamW, a flip) and its evaluation of the validation
    images, as one epoch of a trial runs; the fastest of config.timed_epochs after a warm-up.

    The unit the ledger charges probes and feature-cache passes in: a trial's epoch counts 1
    and includes its validation, so a probe's seconds are set against the same whole epoch.
    """
    from tuner.training._augment import AugmentConfig
    from tuner.training._batches import ImageBatches, eval_transform, train_transform
    from tuner.training._hyperparams import Hyperparams
    from tuner.training._loop import evaluate, make_optimizer, make_runtime, train_one_epoch
    from tuner.training._models import ModelSpec, build_model, freeze, set_train_mode

    runtime = make_runtime(torch.device("cpu"))
    torch.manual_seed(0)
    built = build_model(ModelSpec(config.model, weights=config.weights, num_classes=data.num_classes))
    backbone, head = freeze(built, "full")
    optimizer = make_optimizer(Hyperparams(optimizer="adamw", lr=1e-4), backbone, head)
    loss_fn = torch.nn.CrossEntropyLoss()
    drop = len(data.train_targets) > 32  # a last batch of one breaks BatchNorm
    train = ImageBatches(data.train_images, data.train_targets, train_transform(AugmentConfig(hflip=0.5),
                         built.mean, built.std), runtime.device, 32, shuffle=True, drop_last=drop)
    val = ImageBatches(data.val_images, data.val_targets, eval_transform(built.mean, built.std), runtime.device, 32)
    warmup = 1 if config.timed_epochs > 1 else 0
    timings = []
    for _ in range(config.timed_epochs + warmup):
        started = time.perf_counter()
        set_train_mode(built.model)
        train_one_epoch(built.model, train, loss_fn, optimizer, runtime)
        trained = time.perf_counter()
        evaluate(built.model, val, loss_fn, runtime, data.multilabel)
        timings.append((time.perf_counter() - started, trained - started, time.perf_counter() - trained))
    return min(timings[warmup:])


def head_only_accuracy(data: ImageData, config: Any, weights: str, cache_dir: Path) -> float:
    """Best val accuracy of a head trained on the frozen backbone's features (tuner's Objective)."""
    params = {"freeze": "head", "lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4, "batch_size": 32,
              "epochs": config.sanity_epochs, "scheduler": "none", "dropout": 0.0, "patience": config.sanity_epochs}
    text = yaml.safe_dump({"description": "Head-only sanity check.",
                           "params": {name: {"type": "fixed", "value": value} for name, value in params.items()}})
    space = parse_space(text, source="sanity.yaml", name="sanity")
    settings = TrialSettings(model=config.model, weights=weights, image_size=config.image_size, device="cpu",
                             seed=0, cache_views=1, cache_dir=str(cache_dir))
    return make_objective(space, data, settings)(optuna.trial.FixedTrial({}))


def sanity_check(data: ImageData, config: Any, work: Path) -> tuple[float, float]:
    """(ImageNet, random) head-only accuracies; the first should lead by >= 10 points."""
    pretrained = head_only_accuracy(data, config, config.weights, work / "sanity-pretrained")
    scratch = head_only_accuracy(data, config, "none", work / "sanity-random")
    return pretrained, scratch


def epoch_speeds(folder: Path, data: ImageData, config: Any, work: Path) -> dict[str, float]:
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


def print_extras(folder: Path, data: ImageData, config: Any, work: Path) -> None:
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


