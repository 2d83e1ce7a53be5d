"""Where decoded images live: in RAM up to the memory limit, above it memory-mapped from an unlinked spill file."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from tuner.errors import DataError
from tuner.training._data_config import DataConfig

# Rows copied at a time into a disk-backed buffer: bounded RAM whatever the data's size.
COPY_CHUNK = 4096


def allocate_images(count: int, config: DataConfig) -> torch.Tensor:
    """An uninitialised uint8 count x 3 x S x S buffer: in RAM, or on disk above the memory limit."""
    shape = (count, 3, config.image_size, config.image_size)
    if fits_in_memory(count, config):
        return torch.empty(shape, dtype=torch.uint8)
    return _mapped_buffer(shape, Path(config.spill_dir) if config.spill_dir else default_spill_dir())


def fits_in_memory(count: int, config: DataConfig) -> bool:
    limit = config.memory_limit if config.memory_limit is not None else default_memory_limit()
    return count * 3 * config.image_size**2 <= limit


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


def take(images: torch.Tensor, index: np.ndarray, config: DataConfig) -> torch.Tensor:
    """images[index] as a new contiguous buffer, in RAM or on disk as allocate_images decides."""
    out = allocate_images(len(index), config)
    for start in range(0, len(index), COPY_CHUNK):
        rows = torch.from_numpy(index[start:start + COPY_CHUNK])
        out[start:start + len(rows)] = images[rows]
    return out


def keep(buffer: torch.Tensor, ok: np.ndarray, config: DataConfig) -> torch.Tensor:
    """The rows of `buffer` marked `ok`; the buffer itself when every row is."""
    return buffer if ok.all() else take(buffer, np.flatnonzero(ok), config)
