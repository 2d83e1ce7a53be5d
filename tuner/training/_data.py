"""Decode an image folder, CSV manifest or the digits set once into uint8 tensors; augmentation settings."""

from __future__ import annotations

import csv
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from tuner.errors import DataError
from tuner.text import plural

DIGITS = "digits"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# 8 is the native resolution of `digits`; smaller images carry too little to classify.
MIN_IMAGE_SIZE = 8
SPLIT_DIRS = ("train", "val")
MANIFEST_COLUMNS = ("path", "label")
LABEL_SEPARATOR = ";"
# PIL modes whose pixels are wider than 8 bits; they are treated as 16-bit (0..65535).
WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# How many skipped file names the warning lists before eliding the rest.
SKIPPED_NAMES_SHOWN = 3
# (AugmentConfig field, key of the same value in an Optuna trial's params)
AUG_PARAM_KEYS = (
    ("crop_scale", "aug_crop_scale"),
    ("hflip", "aug_hflip"),
    ("rotation", "aug_rotation"),
    ("color_jitter", "aug_color_jitter"),
)


class DataWarning(UserWarning):
    """Some files of a data source were skipped because they are not readable images."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are decoded and split.

    `source` is a folder of images (one subfolder per class, optionally under
    train/ and val/), a CSV manifest (name ends in .csv) or the literal "digits"
    (use "./digits" for a folder that happens to be called digits).
    """

    source: str
    image_size: int
    val_fraction: float = 0.2
    seed: int = 0
    # Decoded images above this many bytes are memory-mapped from a file in `spill_dir`
    # instead of held in RAM (None: half of this machine's RAM).
    memory_limit: int | None = None
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError(f"source must be a non-empty string, got {self.source!r}")
        _check_image_size(self.image_size)
        if not _is_real(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise DataError(
                f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.memory_limit is not None and (not _is_int(self.memory_limit) or self.memory_limit < 0):
            raise DataError(f"memory_limit must be a non-negative number of bytes, got {self.memory_limit!r}")


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


@dataclass(frozen=True)
class _ManifestRow:
    number: int  # row in the file, header being row 1 as in a spreadsheet
    path: Path
    labels: tuple[str, ...]


def describe_source(source: str) -> str:
    """Short human description of a data source, for logs and reports."""
    if source == DIGITS:
        return "digits (scikit-learn 8x8 handwritten digits)"
    if _is_manifest(source):
        return f"CSV manifest {_user_path(source)}"
    return f"image folder {_user_path(source)}"


def load_data(config: DataConfig) -> ImageData:
    """Decode every image of `config.source` once and split it into train and val.

    Unreadable files are skipped and reported by one DataWarning; anything else
    that makes the source unusable raises DataError.
    """
    if config.source == DIGITS:
        return _load_digits(config)
    path = _user_path(config.source)
    if _is_manifest(config.source):
        data, skipped = _load_manifest(path, config)
    else:
        data, skipped = _load_folder(path, config)
    if skipped:
        warnings.warn(_skipped_message(path, skipped), DataWarning, stacklevel=2)
    return data


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Every readable image of a source, unsplit, with targets indexing a model's own classes."""

    images: torch.Tensor
    targets: torch.Tensor  # int64 class indices, or float32 multi-hot rows for a multi-label model
    skipped: tuple[Path, ...]


def load_labelled(source: str, image_size: int, classes: Sequence[str], multilabel: bool) -> LabelledImages:
    """A folder (one subfolder per class) or a CSV manifest, labelled by `classes` (for evaluate).

    Labels the model does not know are an error; unreadable files are skipped and listed.
    """
    config = DataConfig(source, image_size)
    path = _user_path(source)
    if _is_manifest(source):
        where = f"CSV manifest {path}"
        rows = _read_manifest(path)
        _require_known(where, {label for row in rows for label in row.labels}, classes)
        _require_image_files(where, rows)
        files = [row.path for row in rows]
        hot = np.array([[name in row.labels for name in classes] for row in rows], dtype=bool)
        if not multilabel and (hot.sum(axis=1) > 1).any():
            number = rows[int(np.flatnonzero(hot.sum(axis=1) > 1)[0])].number
            raise DataError(f"{where} row {number}: several labels, but the model is single-label")
        others: list[Path] = []
    else:
        where = f"data folder {path}"
        _require_folder(path)
        names = _class_names(path)
        if not names:
            raise DataError(f"{where}: no class folders (expected one subfolder per class)")
        _require_known(where, set(names), classes)
        files, labels, others = _scan_class_folders(where, path, names, classes)
        hot = _one_hot(labels, len(classes))
    buffer, ok = _decode_files(files, config)
    if not ok.any():
        raise DataError(f"{where}: {_all_unreadable(len(ok))}")
    skipped = tuple(others + [file for file, good in zip(files, ok) if not good])
    hot = hot[ok]
    targets = torch.from_numpy(hot.astype(np.float32)) if multilabel else torch.from_numpy(hot.argmax(axis=1))
    return LabelledImages(_keep(buffer, ok, config), targets, skipped)


def _require_known(where: str, labels: set[str], classes: Sequence[str]) -> None:
    unknown = sorted(labels - set(classes))
    if unknown:
        raise DataError(f"{where}: label(s) {_quoted(unknown)} are not among the model's classes "
                        f"({_quoted(classes)})")


def skipped_message(source: str, skipped: Sequence[Path]) -> str:
    return _skipped_message(_user_path(source), skipped)


# --- digits -----------------------------------------------------------------


def _load_digits(config: DataConfig) -> ImageData:
    # Imported here: scikit-learn is slow to import and only this source needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
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
    train, val = _stratified_split(labels, config.val_fraction, config.seed)
    classes = tuple(str(name) for name in bunch.target_names)
    return _assemble(images, torch.from_numpy(labels), train, val, classes, False, 0, config)


# --- image folder -----------------------------------------------------------


def _load_folder(root: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    _require_folder(root)
    if all((root / name).is_dir() for name in SPLIT_DIRS):
        return _load_presplit_folder(root, config)
    classes = _class_names(root)
    _require_classes(f"data folder {root}", classes)
    images, labels, skipped = _read_class_folders(root, classes, classes, config)
    train, val = _stratified_split(labels, config.val_fraction, config.seed)
    _require_val_images(f"data folder {root}", val, "each class needs at least 2 readable images")
    data = _assemble(images, torch.from_numpy(labels), train, val, classes, False, len(skipped), config)
    return data, skipped


def _load_presplit_folder(root: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    train_dir, val_dir = (root / name for name in SPLIT_DIRS)
    classes = _class_names(train_dir)
    val_names = _class_names(val_dir)
    _require_classes(f"data folder {train_dir}", classes)
    extra = [name for name in val_names if name not in classes]
    if extra:
        raise DataError(f"data folder {root}: val/ has class(es) not in train/: {_quoted(extra)}")
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


def _require_folder(folder: Path) -> None:
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} is not a folder")


def _class_names(folder: Path) -> tuple[str, ...]:
    return tuple(
        sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.is_dir() and not _is_hidden(entry.name)
        )
    )


def _require_classes(where: str, classes: Sequence[str]) -> None:
    if len(classes) >= 2:
        return
    found = f"({_quoted(classes)})" if classes else "(expected one subfolder per class)"
    raise DataError(f"{where}: needs at least 2 classes, found {len(classes)} {found}")


def _read_class_folders(
    folder: Path, names: Sequence[str], classes: Sequence[str], config: DataConfig
) -> tuple[torch.Tensor, np.ndarray, list[Path]]:
    """Decode the class subfolders `names` of `folder`; labels index into `classes`."""
    where = f"data folder {folder}"
    files, labels, others = _scan_class_folders(where, folder, names, classes)
    buffer, ok = _decode_files(files, config)
    _require_readable(where, "class", classes, _one_hot(labels, len(classes)), ok)
    skipped = others + [path for path, good in zip(files, ok) if not good]
    return _keep(buffer, ok, config), labels[ok], skipped


def _scan_class_folders(
    where: str, folder: Path, names: Sequence[str], classes: Sequence[str]
) -> tuple[list[Path], np.ndarray, list[Path]]:
    """List image files with their labels, and the non-image files that will be skipped."""
    files: list[Path] = []
    labels: list[int] = []
    others: list[Path] = []
    for name in names:
        images, non_images = _class_files(folder / name)
        if not images:
            raise DataError(f"{where}: class {name!r} has no images")
        files += images
        labels += [classes.index(name)] * len(images)
        others += non_images
    return files, np.array(labels, dtype=np.int64), others


def _class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Visible files under `folder`, recursively as ImageFolder does, split by extension."""
    images: list[Path] = []
    others: list[Path] = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        # Pruning in place keeps os.walk out of hidden folders (.git, .ipynb_checkpoints).
        dirs[:] = sorted(name for name in dirs if not _is_hidden(name))
        for name in sorted(names):
            if not _is_hidden(name):
                path = Path(parent) / name
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# --- CSV manifest -----------------------------------------------------------


def _load_manifest(path: Path, config: DataConfig) -> tuple[ImageData, list[Path]]:
    where = f"CSV manifest {path}"
    rows = _read_manifest(path)
    classes = tuple(sorted({label for row in rows for label in row.labels}))
    if len(classes) < 2:
        raise DataError(
            f"{where}: needs at least 2 distinct labels, found {len(classes)} ({_quoted(classes)})"
        )
    _require_image_files(where, rows)
    hot = np.array([[name in row.labels for name in classes] for row in rows], dtype=bool)
    buffer, ok = _decode_files([row.path for row in rows], config)
    _require_readable(where, "label", classes, hot, ok)
    skipped = [row.path for row, good in zip(rows, ok) if not good]
    multilabel = any(len(row.labels) > 1 for row in rows)
    images, hot = _keep(buffer, ok, config), hot[ok]
    if multilabel:
        targets = torch.from_numpy(hot.astype(np.float32))
        train, val = _random_split(len(hot), config.val_fraction, config.seed)
        _require_val_images(where, val, f"needs at least 2 readable images, found {len(hot)}")
    else:
        labels = hot.argmax(axis=1).astype(np.int64)
        targets = torch.from_numpy(labels)
        train, val = _stratified_split(labels, config.val_fraction, config.seed)
        _require_val_images(where, val, "each label needs at least 2 readable images")
    data = _assemble(images, targets, train, val, classes, multilabel, len(skipped), config)
    return data, skipped


def _read_manifest(path: Path) -> list[_ManifestRow]:
    if not path.exists():
        raise DataError(f"CSV manifest {path} does not exist")
    if not path.is_file():
        raise DataError(f"CSV manifest {path} is not a file")
    try:
        # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _parse_manifest(path, csv.reader(handle))
    except UnicodeDecodeError:
        raise DataError(f"CSV manifest {path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"CSV manifest {path}: {exc}") from None
    except OSError as exc:
        raise DataError(f"CSV manifest {path} cannot be read: {exc.strerror}") from None


def _parse_manifest(path: Path, reader: Any) -> list[_ManifestRow]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"CSV manifest {path} is empty")
    names = [name.strip() for name in header]
    missing = [column for column in MANIFEST_COLUMNS if column not in names]
    if missing:
        raise DataError(
            f"CSV manifest {path}: missing column(s) {_quoted(missing)} (header: {_quoted(names)})"
        )
    columns = tuple(names.index(column) for column in MANIFEST_COLUMNS)
    rows = [
        _parse_row(path, reader.line_num, record, columns)
        for record in reader
        if any(field.strip() for field in record)  # blank lines are not rows
    ]
    if not rows:
        raise DataError(f"CSV manifest {path} has no rows")
    return rows


def _parse_row(
    path: Path, number: int, record: list[str], columns: tuple[int, int]
) -> _ManifestRow:
    where = f"CSV manifest {path} row {number}"
    if len(record) <= max(columns):
        raise DataError(f"{where}: expected at least {max(columns) + 1} fields, got {len(record)}")
    image, label = (record[column].strip() for column in columns)
    if not image:
        raise DataError(f"{where}: empty path")
    parts = (part.strip() for part in label.split(LABEL_SEPARATOR))
    labels = tuple(dict.fromkeys(part for part in parts if part))  # dedupe, keep order
    if not labels:
        raise DataError(f"{where}: empty label")
    # Path join keeps an absolute image path as is and anchors a relative one at the CSV's folder.
    return _ManifestRow(number, path.parent / Path(image).expanduser(), labels)


def _require_image_files(where: str, rows: Iterable[_ManifestRow]) -> None:
    for row in rows:
        if not row.path.exists():
            raise DataError(f"{where} row {row.number}: image file {row.path} does not exist")


# --- decoding ---------------------------------------------------------------


def _decode_files(paths: Sequence[Path], config: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """Decode into one preallocated buffer (stacking would copy); `ok` marks readable rows."""
    buffer = allocate_images(len(paths), config)
    ok = np.zeros(len(paths), dtype=bool)
    for index, path in enumerate(paths):
        image = read_image(path, config.image_size)
        if image is not None:
            buffer[index] = image
            ok[index] = True
    return buffer, ok


# UnidentifiedImageError and truncated files are OSErrors; SyntaxError, struct.error and
# EOFError come from the plugins' header parsers; DecompressionBombError is its own class.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def read_image(path: Path, image_size: int) -> torch.Tensor | None:
    """One file as a uint8 3 x S x S RGB tensor, or None when PIL cannot decode it."""
    try:
        with Image.open(path) as image:
            # Lets the JPEG decoder downscale by 2..8 while decoding; a no-op for other formats.
            image.draft(None, (image_size, image_size))
            return image_to_tensor(image, image_size)
    # Only what PIL's format plugins raise on malformed input means "skip this file": a
    # MemoryError or a bug is no unreadable file, and must not be counted as one.
    except DECODE_ERRORS:
        return None


def image_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """A PIL image as training sees it: upright, RGB (alpha on white), S x S bilinear, uint8 3 x S x S."""
    rgb = _to_rgb(ImageOps.exif_transpose(image))
    resized = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; transparent pixels are composited on white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode in WIDE_INT_MODES or image.mode == "F":
        return _to_8bit_gray(image).convert("RGB")
    return image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    # PIL's own conversion clips wide values at 255 instead of scaling them, whitening the image.
    values = np.asarray(image, dtype=np.float64)
    if image.mode != "F":  # float images are taken to be in 0..255 already
        values = values / 257.0
    return Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8))


def _keep(buffer: torch.Tensor, ok: np.ndarray, config: DataConfig) -> torch.Tensor:
    return buffer if ok.all() else _take(buffer, np.flatnonzero(ok), config)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=bool)[labels]


def _require_readable(
    where: str, noun: str, classes: Sequence[str], hot: np.ndarray, ok: np.ndarray
) -> None:
    """Fail when nothing decoded, or when a class that has files lost all of them."""
    if not ok.any():
        raise DataError(f"{where}: {_all_unreadable(len(ok))}")
    lost = hot.any(axis=0) & ~hot[ok].any(axis=0)
    if lost.any():
        name = classes[int(np.flatnonzero(lost)[0])]
        raise DataError(f"{where}: {noun} {name!r} has no readable images")


def _skipped_message(source: Path, skipped: Sequence[Path]) -> str:
    shown = [_relative(path, source) for path in skipped[:SKIPPED_NAMES_SHOWN]]
    more = ", ..." if len(skipped) > SKIPPED_NAMES_SHOWN else ""
    return f"skipped {plural(len(skipped), 'unreadable file')} in {source}: {', '.join(shown)}{more}"


def _all_unreadable(count: int) -> str:
    return "the only image file is unreadable" if count == 1 else f"all {count} image files are unreadable"


def _relative(path: Path, source: Path) -> str:
    base = source.parent if source.is_file() else source
    try:
        return str(path.relative_to(base))
    except ValueError:  # an absolute manifest path outside the CSV's folder
        return str(path)


# --- splitting --------------------------------------------------------------


def _stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out round(n * fraction) shuffled samples (at least 1 once n >= 2)."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = _val_count(len(members), fraction)
        val.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _random_split(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(size)
    count = _val_count(size, fraction)
    return np.sort(order[count:]), np.sort(order[:count])


def _val_count(size: int, fraction: float) -> int:
    # A group of 1 stays in train; a bigger one keeps at least 1 sample on each side.
    if size < 2:
        return 0
    return min(max(round(size * fraction), 1), size - 1)


def _require_val_images(where: str, val: np.ndarray, hint: str) -> None:
    if len(val) == 0:
        raise DataError(f"{where}: validation split is empty ({hint})")


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
        # _take copies, so expanded views (digits) become real contiguous tensors here.
        train_images=_take(images, train, config),
        train_targets=targets[train_index],
        val_images=_take(images, val, config),
        val_targets=targets[val_index],
        classes=tuple(classes),
        multilabel=multilabel,
        skipped=skipped,
        on_disk=not fits_in_memory(len(train), config),
    )


# --- where decoded images live ----------------------------------------------


def allocate_images(count: int, config: DataConfig) -> torch.Tensor:
    """An uninitialised uint8 count x 3 x S x S buffer: in RAM, or on disk above the memory limit."""
    shape = (count, 3, config.image_size, config.image_size)
    if fits_in_memory(count, config):
        return torch.empty(shape, dtype=torch.uint8)
    return _mapped_buffer(shape, Path(config.spill_dir) if config.spill_dir else default_spill_dir())


def fits_in_memory(count: int, config: DataConfig) -> bool:
    limit = config.memory_limit if config.memory_limit is not None else default_memory_limit()
    return count * 3 * config.image_size**2 <= limit


def gib_to_bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * 2**30)


def default_memory_limit() -> int:
    """Half of this machine's RAM: the rest is for the model, the loader and other workers."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def default_spill_dir() -> Path:
    return machine_cache_dir("decoded")


def machine_cache_dir(name: str) -> Path:
    """~/.cache/tuner/NAME (under $XDG_CACHE_HOME when set): this machine's own, not shared."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tuner" / name


def _mapped_buffer(shape: tuple[int, ...], folder: Path) -> torch.Tensor:
    """A buffer backed by a file in `folder`, which is unlinked at once.

    The mapping keeps the data reachable for this process (and loader processes forked
    from it); the file has no name, so nothing is left behind when the process ends,
    even after kill -9, and two workers never share or clobber each other's file.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="decoded-", suffix=".u8", dir=folder)
    except OSError as exc:
        raise DataError(f"cannot create a file for decoded images in {folder}: {exc.strerror}") from None
    try:
        os.ftruncate(handle, math.prod(shape))
        array = np.memmap(name, dtype=np.uint8, mode="r+", shape=shape)
    except OSError as exc:
        raise DataError(f"cannot map {math.prod(shape)} bytes of decoded images in {folder}: {exc.strerror}") from None
    finally:
        os.close(handle)
        os.unlink(name)
    return torch.from_numpy(array)


# Rows copied at a time into a disk-backed buffer: bounded RAM whatever the data's size.
COPY_CHUNK = 4096


def _take(images: torch.Tensor, index: np.ndarray, config: DataConfig) -> torch.Tensor:
    """images[index] as a new contiguous buffer, in RAM or on disk as allocate_images decides."""
    out = allocate_images(len(index), config)
    for start in range(0, len(index), COPY_CHUNK):
        rows = torch.from_numpy(index[start:start + COPY_CHUNK])
        out[start:start + len(rows)] = images[rows]
    return out


# --- augmentation -----------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation strengths; the defaults switch every augmentation off."""

    crop_scale: float = 1.0  # lower bound of RandomResizedCrop's scale; 1.0 means no crop
    hflip: float = 0.0  # probability of a horizontal flip
    rotation: float = 0.0  # max degrees of RandomRotation
    color_jitter: float = 0.0  # brightness / contrast / saturation strength

    def __post_init__(self) -> None:
        for name in ("crop_scale", "hflip", "rotation", "color_jitter"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value):
                raise DataError(f"{name} must be a finite number, got {value!r}")
        if not 0 < self.crop_scale <= 1:
            raise DataError(f"crop_scale must be in (0, 1], got {self.crop_scale!r}")
        if not 0 <= self.hflip <= 1:
            raise DataError(f"hflip must be between 0 and 1, got {self.hflip!r}")
        if self.rotation < 0:
            raise DataError(f"rotation must be >= 0, got {self.rotation!r}")
        if self.color_jitter < 0:
            raise DataError(f"color_jitter must be >= 0, got {self.color_jitter!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AugmentConfig:
        """Read the aug_* keys of trial params; missing ones keep defaults, others are ignored."""
        return cls(**{field: params[key] for field, key in AUG_PARAM_KEYS if key in params})


# --- small helpers ----------------------------------------------------------


def _check_image_size(image_size: Any) -> None:
    if not _is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_manifest(source: str) -> bool:
    return source.lower().endswith(".csv")


def _user_path(source: str) -> Path:
    return Path(source).expanduser()


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)
