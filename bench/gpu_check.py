"""(e) GPU check: resnet50 at 224 px on synthetic data, tuner's trainer vs a plain fp32 loop.

Runs on one CUDA GPU in a few minutes: images/s and peak memory of both loops, the ratio
(target >= 2x), and the feature cache's speed-up for head-only epochs. `--device cpu` with a
small `--model` and `--size` is a smoke run of the same code on a machine without a GPU
(its figures mean nothing for the target).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timed  # noqa: E402

from tuner.batches import ImageBatches, TensorBatches, place_images, train_transform  # noqa: E402
from tuner.data import AugmentConfig, ImageData  # noqa: E402
from tuner.features import FeatureCache, FeatureCacheConfig  # noqa: E402
from tuner.models import ModelSpec, build_model, freeze, set_train_mode  # noqa: E402
from tuner.training import Hyperparams, make_optimizer, make_runtime, train_one_epoch  # noqa: E402


def synthetic(n: int, size: int) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, (n,), generator=generator)
    return ImageData(images, targets, images[:256], targets[:256], tuple(map(str, range(10))), False, 0)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    # No peak figure on CPU: printed as "nan GiB" by a smoke run.
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def images_per_second(step, batches: int, batch: int) -> float:
    for _ in range(3):
        step()  # warm-up (cudnn.benchmark picks kernels, AMP caches)
    seconds: dict = {}
    with timed(seconds, "run"):
        for _ in range(batches):
            step()
    return batches * batch / seconds["run"]


def plain_fp32(data: ImageData, args) -> tuple[float, float]:
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False
    model = torchvision.models.get_model(args.model, num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = data.train_images[: args.batch].float().div(255).to(device)
    targets = data.train_targets[: args.batch].to(device)
    reset_peak(device)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()

    rate = images_per_second(step, args.batches, args.batch)
    return rate, peak_gib(device)


def tuner_trainer(data: ImageData, args) -> tuple[float, float]:
    runtime = make_runtime(torch.device(args.device))  # on CUDA: AMP (bf16), channels_last, cudnn.benchmark
    built = build_model(ModelSpec(args.model, weights="none", num_classes=10))
    backbone, head = freeze(built, "full")
    model = built.model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(Hyperparams(optimizer="sgd", lr=0.01, momentum=0.9), backbone, head)
    transform = train_transform(AugmentConfig(crop_scale=0.5, hflip=0.5), built.mean, built.std)
    # As a trial does: uint8 images kept on the GPU, augmented there batch by batch.
    placed = place_images(data, runtime.device)
    loader = ImageBatches(placed.train, data.train_targets, transform, runtime.device, args.batch,
                          shuffle=True, drop_last=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    set_train_mode(model)
    train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())  # warm-up epoch
    reset_peak(runtime.device)
    seconds: dict = {}
    with timed(seconds, "epoch"):
        train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())
    return len(loader) * args.batch / seconds["epoch"], peak_gib(runtime.device)


def feature_cache_speedup(data: ImageData, args) -> float:
    runtime = make_runtime(torch.device(args.device))
    built = build_model(ModelSpec(args.model, weights="none", num_classes=10))
    freeze(built, "head")
    built.model.to(runtime.device)
    seconds: dict = {}
    with tempfile.TemporaryDirectory() as folder, timed(seconds, "extraction"):
        features = FeatureCache(FeatureCacheConfig(Path(folder), views=1), runtime).get(
            built, args.model, data, args.size, AugmentConfig())
    loader = TensorBatches((features.view(0).to(runtime.device), data.train_targets.to(runtime.device)),
                           args.batch, shuffle=True)
    optimizer = make_optimizer(Hyperparams(lr=1e-3), [], list(built.head.parameters()))
    with timed(seconds, "cached epoch"):
        train_one_epoch(built.head, loader, torch.nn.CrossEntropyLoss(), optimizer, runtime)
    print(f"  feature cache: extraction {seconds['extraction']:.2f} s (one backbone pass), "
          f"cached head epoch {seconds['cached epoch']:.4f} s")
    return seconds["extraction"] / seconds["cached epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the code")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU (or --device cpu for a smoke run)")
    print(f"(e) GPU check ({args.model} at {args.size} px on {args.device}) on {machine()}")
    data = synthetic(args.images, args.size)
    plain_rate, plain_mem = plain_fp32(data, args)
    print(f"  plain fp32 loop (tensors already on the device): {plain_rate:.0f} images/s, peak {plain_mem:.1f} GiB")
    tuner_rate, tuner_mem = tuner_trainer(data, args)
    fast = "AMP, channels_last, " if args.device.startswith("cuda") else ""
    print(f"  tuner trainer ({fast}batched augmentation on the device): {tuner_rate:.0f} images/s, "
          f"peak {tuner_mem:.1f} GiB")
    ratio = tuner_rate / plain_rate
    print(f"RATIO (e) tuner/plain images/s = {ratio:.2f}; target >= 2 -> {'MET' if ratio >= 2 else 'NOT MET'}")
    speedup = feature_cache_speedup(data, args)
    print(f"RATIO (e) head-only epoch: backbone pass / cached epoch = {speedup:.0f}x")


if __name__ == "__main__":
    main()
