"""The train/val split of a source's images: stratified per class, or random for multi-label data."""

from __future__ import annotations

import numpy as np

from tuner.errors import DataError


def stratified_split(
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


def random_split(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(size)
    count = _val_count(size, fraction)
    return np.sort(order[count:]), np.sort(order[:count])


def _val_count(size: int, fraction: float) -> int:
    # A group of 1 stays in train; a bigger one keeps at least 1 sample on each side.
    if size < 2:
        return 0
    return min(max(round(size * fraction), 1), size - 1)


def require_val_images(where: str, val: np.ndarray, hint: str) -> None:
    if len(val) == 0:
        raise DataError(f"{where}: validation split is empty ({hint})")
