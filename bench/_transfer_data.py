"""bench/transfer.py's tasks: real-photo ImageFolders written from Fashion-MNIST or scikit-learn's digits."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Task:
    """One task of the suite: which images, how many, at what size, and its own budget.

    `data_seed` picks the images (distinct per task, so no two tasks share a draw); the
    trial seeds stay 0..n-1 in every task. Budgets are sized from a measured fine-tuning
    epoch so that one task with every method and 3 seeds fits 30 minutes on 2 cores
    (bench/README.md, "The task suite", has the measurements and the arithmetic).
    """

    name: str
    data: str  # "fashion" or "digits"
    classes: tuple[str, ...] | None  # class names of `data` to keep; None: all of them
    per_class: int
    val_per_class: int
    image_size: int
    budget_epochs: int
    max_epochs: int
    data_seed: int
    what: str

    def values(self) -> dict[str, Any]:
        """The BenchConfig fields this task sets (flags may override them)."""
        return {"task": self.name, "data": self.data, "classes": self.classes, "per_class": self.per_class,
                "val_per_class": self.val_per_class, "image_size": self.image_size,
                "budget_epochs": self.budget_epochs, "max_epochs": self.max_epochs, "data_seed": self.data_seed}


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("fashion", "fashion", None, 50, 50, 32, 18, 8, 0,
         "all 10 Fashion-MNIST classes, 50 + 50 per class, 32 px: the bench's original set-up"),
    Task("fewshot", "fashion", None, 10, 40, 32, 40, 10, 1,
         "all 10 Fashion-MNIST classes, 10 training images per class, 40 to validate on"),
    Task("large", "fashion", ("pullover", "dress", "sandal"), 300, 60, 48, 8, 4, 2,
         "3 Fashion-MNIST classes, 300 + 60 per class, 48 px: the most images and pixels per epoch"),
    Task("confusable", "fashion", ("t-shirt", "pullover", "coat", "shirt"), 50, 50, 32, 40, 8, 3,
         "Fashion-MNIST's 4 tops that look alike (t-shirt, pullover, coat, shirt), 50 + 50 per class, 32 px"),
    Task("digits", "digits", None, 30, 30, 32, 36, 8, 4,
         "scikit-learn's 8x8 digits, 30 + 30 per class, upscaled to 32 px by tuner's loader"),
)}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): a 4-byte magic whose last byte counts the dimensions, one 4-byte
    size per dimension, then uint8 values (16-byte header on images, 8-byte on labels)."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_available() -> bool:
    return all((FASHION_DIR / f"train-{kind}-ubyte.gz").exists() for kind in ("images-idx3", "labels-idx1"))


def source_images(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 greyscale images, labels, class names) of `fashion` or `digits`."""
    if name == "fashion":
        if not fashion_available():
            raise SystemExit(f"Fashion-MNIST is not installed under {FASHION_DIR} "
                             "(apt-get install -y dataset-fashion-mnist), or run with --data digits")
        images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        return images, labels.astype(np.int64), FASHION_CLASSES
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64), DIGIT_CLASSES


def write_subset(root: Path, source: str, per_class: int, val_per_class: int, seed: int = 0,
                 classes: Sequence[str] | None = None) -> Path:
    """A stratified subset as an ImageFolder of PNG files: root/train/<class>/, root/val/<class>/.

    `classes`: the class names to keep (all when None). The images depend only on the
    arguments: the same seed writes the same files, byte for byte.
    """
    images, labels, names = source_images(source)
    wanted = tuple(names) if classes is None else tuple(classes)
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise SystemExit(f"{source} has no class {unknown[0]!r} (its classes: {', '.join(names)})")
    rng = np.random.default_rng(seed)
    for name in wanted:
        chosen = rng.permutation(np.flatnonzero(labels == names.index(name)))
        if len(chosen) < per_class + val_per_class:
            raise SystemExit(f"--per-class {per_class} + --val-per-class {val_per_class}: class {name!r} "
                             f"of {source} has only {len(chosen)} images")
        for split, picked in (("train", chosen[:per_class]), ("val", chosen[per_class:per_class + val_per_class])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in picked:
                Image.fromarray(images[index], mode="L").save(folder / f"{index}.png")
    return root
