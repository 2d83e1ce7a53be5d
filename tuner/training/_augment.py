"""AugmentConfig: training-time augmentation strengths, checked and read from a trial's aug_* params; torch-free."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuner.errors import DataError
from tuner.training._data_config import is_real

# (AugmentConfig field, key of the same value in an Optuna trial's params)
AUG_PARAM_KEYS = (
    ("crop_scale", "aug_crop_scale"),
    ("hflip", "aug_hflip"),
    ("rotation", "aug_rotation"),
    ("color_jitter", "aug_color_jitter"),
)


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
            if not is_real(value) or not math.isfinite(value):
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
