"""(e) GPU check: resnet50 at 224 px on synthetic data, tuner's trainer vs a plain fp32 loop.

Runs on one CUDA GPU in a few minutes: images/s and peak memory of both loops, the ratio
(target >= 2x), and the feature cache's speed-up for head-only epochs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

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


def images_per_second(step, batches: int, batch: int) -> float:
    for _ in range(3):
        step()  # warm-up (cudnn.benchmark picks kernels, AMP caches)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - start)


def plain_fp32(data: ImageData, args) -> tuple[float, float]:
    torch.backends.cudnn.benchmark = False
    model = torchvision.models.resnet50(num_classes=10).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = data.train_images[: args.batch].float().div(255).cuda()
    targets = data.train_targets[: args.batch].cuda()
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), targets).backward()
        optimizer.step()

    rate = images_per_second(step, args.batches, args.batch)
    return rate, torch.cuda.max_memory_allocated() / 2**30


def tuner_trainer(data: ImageData, args) -> tuple[float, float]:
    runtime = make_runtime(torch.device("cuda"))  # AMP (bf16), channels_last, cudnn.benchmark
    built = build_model(ModelSpec("resnet50", weights="none", num_classes=10))
    backbone, head = freeze(built, "full")
    model = built.model.cuda().to(memory_format=torch.channels_last)
    optimizer = make_optimizer(Hyperparams(optimizer="sgd", lr=0.01, momentum=0.9), backbone, head)
    transform = train_transform(AugmentConfig(crop_scale=0.5, hflip=0.5), built.mean, built.std)
    # As a trial does: uint8 images kept on the GPU, augmented there batch by batch.
    placed = place_images(data, runtime.device)
    loader = ImageBatches(placed.train, data.train_targets, transform, runtime.device, args.batch,
                          shuffle=True, drop_last=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    set_train_mode(model)
    train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())  # warm-up epoch
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, optimizer, runtime, runtime.grad_scaler())
    torch.cuda.synchronize()
    rate = len(loader) * args.batch / (time.perf_counter() - start)
    return rate, torch.cuda.max_memory_allocated() / 2**30


def feature_cache_speedup(data: ImageData, args) -> float:
    runtime = make_runtime(torch.device("cuda"))
    built = build_model(ModelSpec("resnet50", weights="none", num_classes=10))
    freeze(built, "head")
    built.model.cuda()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        features = FeatureCache(FeatureCacheConfig(Path(folder), views=1), runtime).get(
            built, "resnet50", data, 224, AugmentConfig())
        extraction = time.perf_counter() - start
    loader = TensorBatches((features.view(0).cuda(), data.train_targets.cuda()), args.batch, shuffle=True)
    optimizer = make_optimizer(Hyperparams(lr=1e-3), [], list(built.head.parameters()))
    start = time.perf_counter()
    train_one_epoch(built.head, loader, torch.nn.CrossEntropyLoss(), optimizer, runtime)
    torch.cuda.synchronize()
    cached_epoch = time.perf_counter() - start
    print(f"  feature cache: extraction {extraction:.2f} s (one backbone pass), cached head epoch {cached_epoch:.4f} s")
    return extraction / cached_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU")
    print(f"(e) GPU check on {machine()}")
    data = synthetic(args.images, 224)
    plain_rate, plain_mem = plain_fp32(data, args)
    print(f"  plain fp32 loop (tensors already on the GPU): {plain_rate:.0f} images/s, peak {plain_mem:.1f} GiB")
    tuner_rate, tuner_mem = tuner_trainer(data, args)
    print(f"  tuner trainer (AMP, channels_last, batched GPU augmentation): {tuner_rate:.0f} images/s, "
          f"peak {tuner_mem:.1f} GiB")
    ratio = tuner_rate / plain_rate
    print(f"RATIO (e) tuner/plain images/s = {ratio:.2f}; target >= 2 -> {'MET' if ratio >= 2 else 'NOT MET'}")
    speedup = feature_cache_speedup(data, args)
    print(f"RATIO (e) head-only epoch: backbone pass / cached epoch = {speedup:.0f}x")


if __name__ == "__main__":
    main()
