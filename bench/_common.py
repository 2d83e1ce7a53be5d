"""Shared helpers for the benchmarks: machine description, timing, and image folders."""

from __future__ import annotations

import os
import platform
import queue
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")


@contextmanager
def timed(result: dict, key: str) -> Iterator[None]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    result[key] = time.perf_counter() - start


def make_image_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """A folder of JPEG images (one subfolder per class), as a user's data would be."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            base = rng.integers(0, 256, 3)
            pixels = np.clip(rng.normal(base, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


def ratio_line(name: str, value: float, baseline: float, target: str) -> str:
    return f"{name}: {value:.3f} vs baseline {baseline:.3f} -> ratio {value / baseline:.3f} (target {target})"


def next_from(results, procs, what: str):
    """The next value a worker process put on `results`; a worker that died (a nonzero exit
    code) fails the run instead of leaving it waiting forever."""
    while True:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            dead = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"a {what} worker failed (exit code {dead[0]})") from None
