"""Where decoded images live: in RAM up to the memory limit, above it memory-mapped from an unlinked spill file."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tuner.errors import DataError
from tuner.text import byte_size
from tuner.training._data_config import MIN_IMAGE_SIZE, DataConfig

# Rows copied at a time into a disk-backed buffer: bounded RAM whatever the data's size.
COPY_CHUNK = 4096


def allocate_images(count: int, config: DataConfig) -> torch.Tensor:
    """An uninitialised uint8 count x 3 x S x S buffer: in RAM, or on disk above the memory limit."""
    shape = (count, 3, config.image_size, config.image_size)
    if fits_in_memory(count, config):
        return torch.empty(shape, dtype=torch.uint8)
    return _mapped_buffer(shape, Path(config.spill_dir) if config.spill_dir else default_spill_dir())


def fits_in_memory(count: int, config: DataConfig) -> bool:
    return count * 3 * config.image_size**2 <= memory_limit(config)


def memory_limit(config: DataConfig) -> int:
    return config.memory_limit if config.memory_limit is not None else default_memory_limit()


def default_memory_limit() -> int:
    """Half of this machine's RAM: the rest is for the model, the loader and other workers."""
    return machine_ram() // 2


def machine_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_spill_dir() -> Path:
    return machine_cache_dir("decoded")


def spill_dir(config: DataConfig) -> Path:
    return Path(config.spill_dir) if config.spill_dir else default_spill_dir()


# Decoding one image holds PIL's RGB (4 bytes a pixel), its resized copy and the uint8 array
# at once: a bound on the RAM one image takes at the target size, whatever its source size.
DECODE_BYTES_PER_PIXEL = 12


@dataclass(frozen=True)
class Room:
    """What decoded images may use on this machine: RAM up to the memory limit, then the spill's disk."""

    limit: int  # bytes of decoded images held in RAM
    disk_free: int  # bytes free where the spill file would go
    ram: int  # this machine's RAM, for the one image being decoded
    spill_dir: Path

    @classmethod
    def of(cls, config: DataConfig) -> Room:
        folder, ram = spill_dir(config), machine_ram()
        # A limit above the machine's RAM would not spill, and the kernel would end the process.
        return cls(min(memory_limit(config), ram), free_disk(folder), ram, folder)

    def fits(self, count: int, size: int) -> bool:
        return self.holds(count, size) and DECODE_BYTES_PER_PIXEL * size**2 <= self.ram

    def holds(self, count: int, size: int) -> bool:
        total = count * 3 * size**2
        # On disk, splitting into train and val holds the decoded set and its copy at once.
        return total <= self.limit or 2 * total <= self.disk_free

    def largest_size(self, count: int) -> int:
        """The largest image size that fits (below MIN_IMAGE_SIZE when none does)."""
        size = math.isqrt(max(self.limit, self.disk_free // 2) // (3 * max(count, 1)))
        return min(size, math.isqrt(self.ram // DECODE_BYTES_PER_PIXEL))

    def problem(self, count: int, size: int) -> str | None:
        """Why `count` images of `size` px cannot be decoded here, or None when they can."""
        if self.fits(count, size):
            return None
        total, one = count * 3 * size**2, DECODE_BYTES_PER_PIXEL * size**2
        if not self.holds(count, size):
            why = (f"{count} images decode to {byte_size(total)} (images x 3 x {size}^2 bytes), more than the "
                   f"{byte_size(self.limit)} they may hold in RAM (--memory-limit) and more than half the "
                   f"{byte_size(self.disk_free)} free for the spill file in {self.spill_dir}")
        else:
            why = (f"decoding one image at {size} px takes about {byte_size(one)} of RAM, more than this "
                   f"machine's {byte_size(self.ram)}")
        largest = self.largest_size(count)
        fix = f"at most {largest} px fits" if largest >= MIN_IMAGE_SIZE else "no image size fits"
        return f"image size {size} px: {why}; {fix} (--image-size)"


def require_room(count: int, config: DataConfig) -> None:
    """Refuse, before any image is decoded, a data set that this machine cannot hold: decoding it
    would fill RAM and disk for minutes until the kernel killed the process without a word."""
    problem = Room.of(config).problem(count, config.image_size)
    if problem:
        raise DataError(problem)


def free_disk(folder: Path) -> int:
    """Free bytes on the file system that holds `folder`, or would hold it (nothing is created)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return 0


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
