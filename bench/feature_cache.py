"""(b) Head-only trials: training epochs on cached backbone features vs recomputing the backbone.

Both paths train the same Dropout+Linear head on the same images with the backbone frozen.
Without the cache, every epoch runs the frozen backbone forward over every image; with it,
the backbone runs once per cached view and epochs only touch the head.
Prints seconds per epoch for both, the one-time extraction cost, and the speed-up (target >= 50x)
at 64 px, and at 32 px for comparison. A cached epoch costs about 20 ms per 1,400 images whatever
the input size (per-batch work of the head: dropout's mask, the loss, backward, the optimizer
step), while recomputing the backbone grows with the number of pixels: 32 px is the least
favourable size, and tuner's default input is 224 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timed  # noqa: E402

from tuner.training._batches import ImageBatches, TensorBatches, train_transform  # noqa: E402
from tuner.training._augment import AugmentConfig  # noqa: E402
from tuner.training._data import load_data  # noqa: E402
from tuner.training._data_config import DataConfig  # noqa: E402
from tuner.training._features import FeatureCache, FeatureCacheConfig  # noqa: E402
from tuner.training._models import ModelSpec, build_model, freeze  # noqa: E402
from tuner.training._hyperparams import Hyperparams  # noqa: E402
from tuner.training._loop import make_optimizer, make_runtime, train_one_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-sizes", default="64,32",
                        help="input sizes to measure; the first gives the RATIO line")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs of each path (the fastest counts)")
    parser.add_argument("--views", type=int, default=2)
    args = parser.parse_args()
    print(f"(b) head-only trials with/without the feature cache on {machine()}")
    speedups = [measure(args, int(size)) for size in args.image_sizes.split(",")]
    print(f"RATIO (b) head-only epoch speed-up with the cache = {speedups[0]:.1f}x; target >= 50x -> "
          f"{'MET' if speedups[0] >= 50 else 'NOT MET'}")


def measure(args, image_size: int) -> float:
    """Seconds per head-only epoch with and without the cache at one input size; returns the speed-up."""
    runtime = make_runtime(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data(DataConfig("digits", image_size))
    torch.manual_seed(0)
    built = build_model(ModelSpec(args.model, weights="none", num_classes=data.num_classes, dropout=0.3))
    backbone, head = freeze(built, "head")
    built.model.to(runtime.device)
    hp = Hyperparams(optimizer="adamw", lr=1e-3)
    aug = AugmentConfig(crop_scale=0.8, hflip=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(data.train_images)
    times: dict = {}

    optimizer = make_optimizer(hp, backbone, head)
    transform = train_transform(aug, built.mean, built.std)
    loader = ImageBatches(data.train_images, data.train_targets, transform, runtime.device, args.batch_size,
                          shuffle=True)
    for epoch in range(args.epochs):
        built.model.eval()  # a frozen backbone is a fixed feature extractor
        built.head.train()
        with timed(times, f"uncached{epoch}"):
            train_one_epoch(built.model, loader, loss_fn, optimizer, runtime)
    uncached = min(times[f"uncached{e}"] for e in range(args.epochs))

    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(FeatureCacheConfig(Path(folder), views=args.views), runtime)
        with timed(times, "extract"):
            features = cache.get(built, args.model, data, image_size, aug)
        optimizer = make_optimizer(hp, [], list(built.head.parameters()))
        for epoch in range(args.epochs):
            head_loader = TensorBatches((features.view(epoch).to(runtime.device), data.train_targets.to(runtime.device)),
                                        args.batch_size, shuffle=True)
            built.head.train()
            with timed(times, f"cached{epoch}"):
                train_one_epoch(built.head, head_loader, loss_fn, optimizer, runtime)
        cached = min(times[f"cached{e}"] for e in range(args.epochs))
        with timed(times, "reload"):
            FeatureCache(FeatureCacheConfig(Path(folder), views=args.views), runtime).get(
                built, args.model, data, image_size, aug)
    speedup = uncached / cached
    print(f"  {args.model} at {image_size} px, without cache: {uncached:.3f} s/epoch ({n / uncached:.0f} images/s)")
    print(f"  {args.model} at {image_size} px, with cache:    {cached:.4f} s/epoch ({n / cached:.0f} images/s); "
          f"one-time extraction of {args.views} views {times['extract']:.2f} s; another worker loads it in "
          f"{times['reload']:.2f} s -> {speedup:.1f}x")
    return speedup


if __name__ == "__main__":
    main()
