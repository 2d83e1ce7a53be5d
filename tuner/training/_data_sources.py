"""A data source's files, before any decoding: image folders, CSV manifests and the `digits` name; torch-free."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import DataError
from tuner.text import plural

DIGITS = "digits"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_DIRS = ("train", "val")
MANIFEST_COLUMNS = ("path", "label")
LABEL_SEPARATOR = ";"
# How many skipped file names the warning lists before eliding the rest.
SKIPPED_NAMES_SHOWN = 3


class DataWarning(UserWarning):
    """Some files of a data source were skipped because they are not readable images."""


@dataclass(frozen=True)
class ManifestRow:
    number: int  # row in the file, header being row 1 as in a spreadsheet
    path: Path
    labels: tuple[str, ...]


def describe_source(source: str) -> str:
    """Short human description of a data source, for logs and reports."""
    if source == DIGITS:
        return "digits (scikit-learn 8x8 handwritten digits)"
    if is_manifest(source):
        return f"CSV manifest {user_path(source)}"
    return f"image folder {user_path(source)}"


def is_manifest(source: str) -> bool:
    return source.lower().endswith(".csv")


def user_path(source: str) -> Path:
    return Path(source).expanduser()


def skipped_message(source: str, skipped: Sequence[Path]) -> str:
    """The DataWarning's text: how many files were skipped, naming the first few."""
    folder = user_path(source)
    shown = [relative(path, folder) for path in skipped[:SKIPPED_NAMES_SHOWN]]
    more = ", ..." if len(skipped) > SKIPPED_NAMES_SHOWN else ""
    return f"skipped {plural(len(skipped), 'unreadable file')} in {folder}: {', '.join(shown)}{more}"


def relative(path: Path, source: Path) -> str:
    base = source.parent if source.is_file() else source
    try:
        return str(path.relative_to(base))
    except ValueError:  # an absolute manifest path outside the CSV's folder
        return str(path)


def quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)


def require_known(where: str, labels: set[str], classes: Sequence[str]) -> None:
    unknown = sorted(labels - set(classes))
    if unknown:
        raise DataError(f"{where}: label(s) {quoted(unknown)} are not among the model's classes "
                        f"({quoted(classes)})")


# --- image folder -----------------------------------------------------------


def require_folder(folder: Path) -> None:
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} is not a folder")


def class_names(folder: Path) -> tuple[str, ...]:
    return tuple(
        sorted(
            entry.name
            for entry in folder.iterdir()
            if entry.is_dir() and not _is_hidden(entry.name)
        )
    )


def require_classes(where: str, classes: Sequence[str]) -> None:
    if len(classes) >= 2:
        return
    found = f"({quoted(classes)})" if classes else "(expected one subfolder per class)"
    raise DataError(f"{where}: needs at least 2 classes, found {len(classes)} {found}")


def scan_class_folders(
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


def read_manifest(path: Path) -> list[ManifestRow]:
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


def _parse_manifest(path: Path, reader: Any) -> list[ManifestRow]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"CSV manifest {path} is empty")
    names = [name.strip() for name in header]
    missing = [column for column in MANIFEST_COLUMNS if column not in names]
    if missing:
        raise DataError(
            f"CSV manifest {path}: missing column(s) {quoted(missing)} (header: {quoted(names)})"
        )
    columns = tuple(names.index(column) for column in MANIFEST_COLUMNS)
    rows = [
        _parse_row(path, reader.line_num, record, columns, len(names))
        for record in reader
        if any(field.strip() for field in record)  # blank lines are not rows
    ]
    if not rows:
        raise DataError(f"CSV manifest {path} has no rows")
    require_listed_once(path, rows)
    return rows


def _parse_row(
    path: Path, number: int, record: list[str], columns: tuple[int, int], width: int
) -> ManifestRow:
    where = f"CSV manifest {path} row {number}"
    if len(record) <= max(columns):
        raise DataError(f"{where}: expected at least {max(columns) + 1} fields, got {len(record)}")
    if len(record) > width:
        # An unquoted `a.png,cat,dog` would silently lose `dog`.
        raise DataError(f"{where}: {len(record)} fields, but the header has {width} "
                        f"(extra: {quoted(record[width:])}); separate several labels with "
                        f"'{LABEL_SEPARATOR}' (cat{LABEL_SEPARATOR}dog)")
    image, label = (record[column].strip() for column in columns)
    if not image:
        raise DataError(f"{where}: empty path")
    return ManifestRow(number, path.parent / Path(image).expanduser(), _labels(where, label))


def _labels(where: str, label: str) -> tuple[str, ...]:
    """The row's labels; an empty one (`a;;b`, `a;`) or one with a comma is a typo, never a class."""
    parts = [part.strip() for part in label.split(LABEL_SEPARATOR)]
    if not any(parts):
        raise DataError(f"{where}: empty label")
    if not all(parts):
        raise DataError(f"{where}: empty label in {label!r} (labels are separated by '{LABEL_SEPARATOR}')")
    with_comma = [part for part in parts if "," in part]
    if with_comma:
        raise DataError(f"{where}: label {with_comma[0]!r} contains ','; separate several labels with "
                        f"'{LABEL_SEPARATOR}' (cat{LABEL_SEPARATOR}dog)")
    return tuple(dict.fromkeys(parts))  # `cat;cat` is cat: dedupe, keep order


def require_listed_once(path: Path, rows: Sequence[ManifestRow]) -> None:
    """Each image once: a second row would give it a second label silently, or (same label) put it
    in train and val at once, so that validation scores an image the model trained on."""
    first: dict[Path, ManifestRow] = {}
    for row in rows:
        # normpath: `a.png` and `./a.png` are one file; no disk access for large manifests.
        key = Path(os.path.normpath(row.path))
        earlier = first.setdefault(key, row)
        if earlier is not row:
            raise DataError(
                f"CSV manifest {path} row {row.number}: image {relative(row.path, path)} is already listed in row "
                f"{earlier.number} (labels {quoted(earlier.labels)} there, {quoted(row.labels)} here); list each "
                f"image once, with all its labels separated by '{LABEL_SEPARATOR}'")


def require_image_files(where: str, rows: Iterable[ManifestRow]) -> None:
    for row in rows:
        if not row.path.exists():
            raise DataError(f"{where} row {row.number}: image file {row.path} does not exist")


def manifest_targets(rows: Sequence[ManifestRow], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot rows (bool, rows x classes): which of `classes` each row is labelled with."""
    return np.array([[name in row.labels for name in classes] for row in rows], dtype=bool)
