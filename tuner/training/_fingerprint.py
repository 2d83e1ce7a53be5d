"""A study's data fingerprint: class names, images per class in train and val, and a cheap content hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import DataError
from tuner.training._data_sources import DIGITS, is_manifest, read_manifest, relative

# ImageData for annotations only: _data imports torch, and service._prepare, which the read-only
# commands import, imports this module at the top.
if TYPE_CHECKING:
    from tuner.training._data import ImageData


def data_fingerprint(data: ImageData, source: str) -> dict[str, Any]:
    """What a study remembers of its data, to refuse a worker that brings other data.

    The content hash covers file names (relative to the data folder or manifest) and sizes,
    not paths or pixels: the same images copied to another machine's path match, and
    decoding differences between library versions on two machines cannot break the match.
    """
    return {
        "classes": list(data.classes),
        "train_counts": per_class(data.train_targets, data),
        "val_counts": per_class(data.val_targets, data),
        "content": content_digest(source),
    }


def per_class(targets, data: ImageData) -> dict[str, int]:
    if data.multilabel:
        counts = targets.sum(dim=0).round().long()
    else:
        counts = targets.bincount(minlength=data.num_classes)
    return {name: int(count) for name, count in zip(data.classes, counts.tolist())}


def content_digest(source: str) -> str:
    """sha256 (16 hex digits) of every file's relative name and size; 'digits' is itself."""
    if source == DIGITS:
        return DIGITS
    path = Path(source).expanduser()
    digest = hashlib.sha256()
    if is_manifest(source):
        for row in read_manifest(path):
            size = row.path.stat().st_size if row.path.exists() else -1
            digest.update(f"{relative(row.path, path)}\0{size}\0{';'.join(row.labels)}\n".encode())
    else:
        for name, size in folder_files(path):
            digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def folder_files(root: Path) -> list[tuple[str, int]]:
    """Visible files under `root` (hidden folders pruned, as the loader does), sorted, with sizes."""
    found = []
    for parent, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(parent) / name
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return sorted(found)


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first way the current data differs from the study's, in words; None if it matches."""
    if list(stored["classes"]) != list(current["classes"]):
        return f"classes differ: study has {_names(stored['classes'])}, data has {_names(current['classes'])}"
    for split in ("train", "val"):
        key = f"{split}_counts"
        if dict(stored[key]) != dict(current[key]):
            return (f"{split} images per class differ: study has {_counts(stored[key])}, "
                    f"data has {_counts(current[key])}")
    if stored["content"] != current["content"]:
        return ("file names or sizes differ (same classes and counts per class): "
                f"study has content hash {stored['content']}, data has {current['content']}")
    return None


def check_same_data(stored: Mapping[str, Any] | None, data: ImageData, source: str) -> None:
    """DataError if `data` is not the data the study was created with (studies from before
    fingerprints have none stored, and are not checked)."""
    if not stored:
        return
    problem = differences(stored, data_fingerprint(data, source))
    if problem is not None:
        raise DataError(f"data {source} is not this study's data: {problem}")


def _names(classes) -> str:
    return "[" + ", ".join(str(c) for c in classes) + "]"


def _counts(counts: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "}"
