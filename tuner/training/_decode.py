"""Decode image files with PIL into uint8 3 x S x S RGB tensors, as training sees them; unreadable files are None."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tuner.errors import DataError
from tuner.training._data_config import DataConfig
from tuner.training._spill import allocate_images, require_room

# PIL modes whose pixels are wider than 8 bits; they are treated as 16-bit (0..65535).
WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# UnidentifiedImageError and truncated files are OSErrors; SyntaxError, struct.error and
# EOFError come from the plugins' header parsers; DecompressionBombError is its own class.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def decode_files(paths: Sequence[Path], config: DataConfig) -> tuple[torch.Tensor, np.ndarray]:
    """Decode into one preallocated buffer (stacking would copy); `ok` marks readable rows."""
    require_room(len(paths), config)
    buffer = allocate_images(len(paths), config)
    ok = np.zeros(len(paths), dtype=bool)
    for index, path in enumerate(paths):
        image = read_image(path, config.image_size)
        if image is not None:
            buffer[index] = image
            ok[index] = True
    return buffer, ok


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


def require_readable(
    where: str, noun: str, classes: Sequence[str], hot: np.ndarray, ok: np.ndarray
) -> None:
    """Fail when nothing decoded, or when a class that has files lost all of them."""
    require_any_readable(where, ok)
    lost = hot.any(axis=0) & ~hot[ok].any(axis=0)
    if lost.any():
        name = classes[int(np.flatnonzero(lost)[0])]
        raise DataError(f"{where}: {noun} {name!r} has no readable images")


def require_any_readable(where: str, ok: np.ndarray) -> None:
    if not ok.any():
        count = len(ok)
        unreadable = ("the only image file is unreadable" if count == 1
                      else f"all {count} image files are unreadable")
        raise DataError(f"{where}: {unreadable}")
