"""Load a data source once: decode an image folder, CSV manifest or the digits set into split uint8 tensors."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from tuner.errors import DataError

# The steps live beside this module: _data_sources (listing files, reading manifests), _decode
# (PIL to tensors), _split (train/val), _spill (the memory limit), _augment (AugmentConfig).
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import (
    DIGITS,
    SPLIT_DIRS,
    DataWarning,
    class_names,
    is_manifest,
    manifest_targets,
    quoted,
    read_manifest,
    require_classes,
    require_folder,
    require_image_files,
    require_known,
    scan_class_folders,
    skipped_message,
    user_path,
)
from tuner.training._decode import decode_files, require_any_readable, require_readable
from tuner.training._spill import fits_in_memory, keep, require_room, take
from tuner.training._split import random_split, require_val_images, stratified_split


# eq=False: the generated __eq__ would compare tensors and fail on their ambiguous truth value.
@dataclass(frozen=True, eq=False)
class ImageData:
    """Decoded images (uint8, N x 3 x S x S, RGB) and targets, already split into train and val.

    Targets are int64 class indices (N) for single-label data and float32
    multi-hot rows (N x C) for multi-label data.
    """

    train_images: torch.Tensor
    train_targets: torch.Tensor
    val_images: torch.Tensor
    val_targets: torch.Tensor
    classes: tuple[str, ...]
    multilabel: bool
    skipped: int
    # The training images are memory-mapped from disk (too big for the memory limit).
    on_disk: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Every readable image of a source, unsplit, with targets indexing a model's own classes."""

    images: torch.Tensor
    targets: torch.Tensor  # int64 class indices, or float32 multi-hot rows for a multi-label model
    skipped: tuple[Path, ...]


def load_data(config: DataConfig) -> ImageData:
    """Decode every image of `config.source` once and split it into train and val.

    Unreadable files are skipped and reported by one DataWarning; anything else
    that makes the source unusable raises DataError.
    """
    if config.source == DIGITS:
        return _load_digits(config)
    path = user_path(config.source)
    if is_manifest(config.source):
        data, skipped = _load_manifest(path, config)
    else:
        data, skipped = _load_folder(path, config)
    if skipped:
        warnings.warn(skipped_message(config.source, skipped), DataWarning, stacklevel=2)
    return data


def load_labelled(source: str, image_size: int, classes: Sequence[str], multilabel: bool) -> LabelledImages:
    """A folder (one subfolder per class) or a CSV manifest, labelled by `classes` (for evaluate).

    Labels the model does not know are an error; unreadable files are skipped and listed.
    """
    config = DataConfig(source, image_size)
    path = user_path(source)
    if is_manifest(source):
        where = f"CSV manifest {path}"
        files, hot = _labelled_manifest(where, path, classes, multilabel)
        others: list[Path] = []
    else:
        where = f"data folder {path}"
        files, hot, others = _labelled_folder(where, path, classes)
    buffer, ok = decode_files(files, config)
    require_any_readable(where, ok)
    skipped = tuple(others + [file for file, good in zip(files, ok) if not good])
    hot = hot[ok]
    targets = torch.from_numpy(hot.astype(np.float32)) if multilabel else torch.from_numpy(hot.argmax(axis=1))
    return LabelledImages(keep(buffer, ok, config), targets, skipped)


def _labelled_manifest(
    where: str, path: Path, classes: Sequence[str], multilabel: bool
) -> tuple[list[Path], np.ndarray]:
    rows = read_manifest(path)
    require_known(where, {label for row in rows for label in row.labels}, classes)
    require_image_files(where, rows)
    hot = manifest_targets(rows, classes)
    if not multilabel and (hot.sum(axis=1) > 1).any():
        number = rows[int(np.flatnonzero(hot.sum(axis=1) > 1)[0])].number
        raise DataError(f"{where} row {number}: several labels, but the model is single-label")
    return [row.path for row in rows], hot


def _labelled_folder(
    where: str, path: Path, classes: Sequence[str]
) -> tuple[list[Path], np.ndarray, list[Path]]:
    require_folder(path)
    names = class_names(path)
    if not names:
        raise DataError(f"{where}: no class folders (expected one subfolder per class)")
    require_known(where, set(names), classes)
    files, labels, others = scan_class_folders(where, path, names, classes)
    return files, _one_hot(labels, len(classes)), others


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=bool)[labels]


# --- digits -----------------------------------------------------------------


def _load_digits(config: DataConfig) -> ImageData:
    # Imported here: scikit-learn is slow to import and only this source needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    require_room(len(bunch.images), config)
    # Pixels are 0..16; stretch to the 0..255 of every other source.
    gray = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    gray = v2.functional.resize(
        gray,
        [config.image_size, config.image_size],
        interpolation=v2.InterpolationMode.BILINEAR,
        antialias=True,
    )
    images = gray.expand(-1, 3, -1, -1)
    labels = bunch.target.astype(np.int64)
    train, val = stratified_split(labels, config.val_fraction, config.seed)
    classes = tuple(str(name) for name in bunch.target_names)
    return _assemble(images, torch.from_numpy(labels), train, val, classes, False, 0, config)


# --- image folder -----------------------------------------------------------


def _load_folder(root: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    require_folder(root)
    if all((root / name).is_dir() for name in SPLIT_DIRS):
        return _load_presplit_folder(root, config)
    classes = class_names(root)
    require_classes(f"data folder {root}", classes)
    images, labels, skipped = _read_class_folders(root, classes, classes, config)
    train, val = stratified_split(labels, config.val_fraction, config.seed)
    require_val_images(f"data folder {root}", val, "each class needs at least 2 readable images")
    data = _assemble(images, torch.from_numpy(labels), train, val, classes, False, len(skipped), config)
    return data, skipped


def _load_presplit_folder(root: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    train_dir, val_dir = (root / name for name in SPLIT_DIRS)
    classes = class_names(train_dir)
    val_names = class_names(val_dir)
    require_classes(f"data folder {train_dir}", classes)
    extra = [name for name in val_names if name not in classes]
    if extra:
        raise DataError(f"data folder {root}: val/ has class(es) not in train/: {quoted(extra)}")
    if not val_names:
        raise DataError(f"data folder {val_dir} has no class folders")
    train_images, train_labels, train_skipped = _read_class_folders(
        train_dir, classes, classes, config
    )
    val_images, val_labels, val_skipped = _read_class_folders(
        val_dir, val_names, classes, config
    )
    skipped = train_skipped + val_skipped
    data = ImageData(
        train_images=train_images,
        train_targets=torch.from_numpy(train_labels),
        val_images=val_images,
        val_targets=torch.from_numpy(val_labels),
        classes=classes,
        multilabel=False,
        skipped=len(skipped),
        on_disk=not fits_in_memory(len(train_images), config),
    )
    return data, skipped


def _read_class_folders(
    folder: Path, names: Sequence[str], classes: Sequence[str], config: DataConfig
) -> tuple[torch.Tensor, np.ndarray, list[Path]]:
    """Decode the class subfolders `names` of `folder`; labels index into `classes`."""
    where = f"data folder {folder}"
    files, labels, others = scan_class_folders(where, folder, names, classes)
    buffer, ok = decode_files(files, config)
    require_readable(where, "class", classes, _one_hot(labels, len(classes)), ok)
    skipped = others + [path for path, good in zip(files, ok) if not good]
    return keep(buffer, ok, config), labels[ok], skipped


# --- CSV manifest -----------------------------------------------------------


def _load_manifest(path: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    where = f"CSV manifest {path}"
    rows = read_manifest(path)
    classes = tuple(sorted({label for row in rows for label in row.labels}))
    if len(classes) < 2:
        raise DataError(
            f"{where}: needs at least 2 distinct labels, found {len(classes)} ({quoted(classes)})"
        )
    require_image_files(where, rows)
    hot = manifest_targets(rows, classes)
    buffer, ok = decode_files([row.path for row in rows], config)
    require_readable(where, "label", classes, hot, ok)
    skipped = [row.path for row, good in zip(rows, ok) if not good]
    multilabel = any(len(row.labels) > 1 for row in rows)
    images, hot = keep(buffer, ok, config), hot[ok]
    if multilabel:
        targets = torch.from_numpy(hot.astype(np.float32))
        train, val = random_split(len(hot), config.val_fraction, config.seed)
        require_val_images(where, val, f"needs at least 2 readable images, found {len(hot)}")
    else:
        labels = hot.argmax(axis=1).astype(np.int64)
        targets = torch.from_numpy(labels)
        train, val = stratified_split(labels, config.val_fraction, config.seed)
        require_val_images(where, val, "each label needs at least 2 readable images")
    data = _assemble(images, targets, train, val, classes, multilabel, len(skipped), config)
    return data, skipped


def _assemble(
    images: torch.Tensor,
    targets: torch.Tensor,
    train: np.ndarray,
    val: np.ndarray,
    classes: Sequence[str],
    multilabel: bool,
    skipped: int,
    config: DataConfig,
) -> ImageData:
    train_index, val_index = torch.from_numpy(train), torch.from_numpy(val)
    return ImageData(
        # take copies, so expanded views (digits) become real contiguous tensors here.
        train_images=take(images, train, config),
        train_targets=targets[train_index],
        val_images=take(images, val, config),
        val_targets=targets[val_index],
        classes=tuple(classes),
        multilabel=multilabel,
        skipped=skipped,
        on_disk=not fits_in_memory(len(train), config),
    )
