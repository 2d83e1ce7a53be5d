"""DataConfig: where a study's images come from and how they are decoded, split and held; checked, torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner.errors import DataError

# 8 is the native resolution of `digits`; smaller images carry too little to classify.
MIN_IMAGE_SIZE = 8


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
        check_image_size(self.image_size)
        if not is_real(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise DataError(
                f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.memory_limit is not None and (not is_int(self.memory_limit) or self.memory_limit < 0):
            raise DataError(f"memory_limit must be a non-negative number of bytes, got {self.memory_limit!r}")


def gib_to_bytes(gib: float | None) -> int | None:
    """A --memory-limit in GiB as DataConfig.memory_limit's bytes."""
    return None if gib is None else int(gib * 2**30)


def check_image_size(image_size: Any) -> None:
    if not is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
