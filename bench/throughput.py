"""(a) Training throughput: tuner's trainer vs a plain PyTorch loop on the same image folder.

The plain loop is what a user would write: torchvision ImageFolder + DataLoader + PIL
transforms, decoding and resizing every image every epoch. tuner decodes once into uint8
tensors and augments tensors. Same model, batch size, optimizer and augmentations.
Prints epoch time, images/s and the ratio tuner/plain (target <= 1.05 on CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, make_image_folder, timed  # noqa: E402

from tuner.training._batches import ImageBatches, train_transform  # noqa: E402
from tuner.training._augment import AugmentConfig  # noqa: E402
from tuner.training._data import load_data  # noqa: E402
from tuner.training._data_config import DataConfig  # noqa: E402
from tuner.training._models import ModelSpec, build_model, freeze, set_train_mode  # noqa: E402
from tuner.training._hyperparams import Hyperparams  # noqa: E402
from tuner.training._loop import make_optimizer, make_runtime, train_one_epoch  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def plain_epoch_time(root: Path, args, workers: int) -> float:
    transform = T.Compose([
        T.RandomResizedCrop(args.image_size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(),
        T.ToTensor(), T.Normalize(MEAN, STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None, num_classes=len(dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    times: dict = {}
    for epoch in range(args.epochs + 1):  # the first epoch warms up
        model.train()
        with timed(times, epoch):
            for images, labels in loader:
                optimizer.zero_grad()
                loss_fn(model(images), labels).backward()
                optimizer.step()
    return min(times[e] for e in range(1, args.epochs + 1))


def tuner_epoch_time(root: Path, args) -> tuple[float, float]:
    times: dict = {}
    with timed(times, "decode"):
        data = load_data(DataConfig(str(root), args.image_size, val_fraction=0.01))
    torch.manual_seed(0)
    built = build_model(ModelSpec(args.model, weights="none", num_classes=data.num_classes))
    backbone, head = freeze(built, "full")
    hp = Hyperparams(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0)
    optimizer = make_optimizer(hp, backbone, head)
    runtime = make_runtime(torch.device("cpu"))
    transform = train_transform(AugmentConfig(crop_scale=0.5, hflip=0.5), built.mean, built.std)
    loader = ImageBatches(data.train_images, data.train_targets, transform, runtime.device, args.batch_size,
                          shuffle=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs + 1):
        set_train_mode(built.model)
        with timed(times, epoch):
            train_one_epoch(built.model, loader, loss_fn, optimizer, runtime)
    return min(times[e] for e in range(1, args.epochs + 1)), times["decode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=768, help="images in the folder")
    parser.add_argument("--stored-size", type=int, default=96, help="pixel size of the JPEGs on disk")
    parser.add_argument("--image-size", type=int, default=32, help="training input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    args = parser.parse_args()
    print(f"(a) training throughput on {machine()}")
    with tempfile.TemporaryDirectory() as folder:
        root = make_image_folder(Path(folder) / "images", classes=4, per_class=args.images // 4,
                                 size=args.stored_size)
        tuner_time, decode = tuner_epoch_time(root, args)
        plain = {workers: plain_epoch_time(root, args, workers) for workers in (0, 2)}
    n = args.images
    best_workers = min(plain, key=plain.get)
    for workers, seconds in plain.items():
        print(f"  plain loop, num_workers={workers}: {seconds:.2f} s/epoch, {n / seconds:.0f} images/s")
    print(f"  tuner trainer:              {tuner_time:.2f} s/epoch, {n / tuner_time:.0f} images/s "
          f"(one-time decode {decode:.2f} s)")
    ratio = tuner_time / plain[best_workers]
    print(f"RATIO (a) tuner/plain epoch time = {ratio:.3f} against the faster plain loop "
          f"(num_workers={best_workers}); target <= 1.05 -> {'MET' if ratio <= 1.05 else 'NOT MET'}")


if __name__ == "__main__":
    main()
