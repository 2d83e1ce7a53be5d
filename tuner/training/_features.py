"""A frozen-backbone feature cache: head-only trials train on features computed once per view."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterator, Sequence

import numpy as np
import torch

from tuner.training._batches import ImageBatches, eval_transform, is_random, train_transform
from tuner.training._augment import AugmentConfig
from tuner.training._spill import machine_cache_dir
from tuner.errors import TunerError
from tuner.progress import Progress
from tuner.training._loop import Runtime, to_device

# Extraction batch: large enough to keep the device busy, small enough for 224px on a laptop.
EXTRACT_BATCH = 128


def default_cache_dir() -> Path:
    """Local to the machine (not the shared artifact store): workers on one node share it."""
    return machine_cache_dir("features")


@dataclass(frozen=True)
class FeatureCacheConfig:
    """Where features live and how many augmented views of each training image are cached.

    K views trade diversity for speed: each epoch trains on one of K fixed augmentations
    of every image, instead of a fresh one. K=1 is plain feature extraction; 4-8 keep
    most of augmentation's regularising effect at K backbone passes in all (vs one per epoch).
    """

    directory: Path
    views: int = 4

    def __post_init__(self) -> None:
        if self.views < 1:
            raise TunerError(f"--cache-views must be >= 1, got {self.views}")


@dataclass(frozen=True)
class CachedFeatures:
    train_views: tuple[torch.Tensor, ...]  # K tensors, N_train x F, float32
    val: torch.Tensor  # N_val x F

    def view(self, index: int) -> torch.Tensor:
        return self.train_views[index % len(self.train_views)]


# Bytes hashed at a time: a large data set (or one memory-mapped from its spill file) is read
# in slices, never copied whole into RAM.
DIGEST_CHUNK = 16 * 2**20


def tensor_digest(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' shapes and bytes (in row-major order), hashed slice by slice.

    The slices' bytes follow each other exactly as the whole tensor's would: the digest is the
    one of the whole tensor's bytes, and a cache key made from it keeps its meaning."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        for part in row_slices(tensor.detach(), DIGEST_CHUNK):
            # A contiguous CPU slice is a view (no copy); a GPU or strided one copies this slice only.
            digest.update(part.cpu().contiguous().numpy().reshape(-1).view(np.uint8))
    return digest.hexdigest()


def row_slices(tensor: torch.Tensor, chunk_bytes: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of `tensor` along its first dimension, of about chunk_bytes each."""
    if tensor.dim() == 0 or len(tensor) == 0:
        yield tensor
        return
    rows = max(1, chunk_bytes // max(1, tensor[0].numel() * tensor.element_size()))
    for start in range(0, len(tensor), rows):
        yield tensor[start:start + rows]


def backbone_digest(model: torch.nn.Module, head: torch.nn.Module) -> str:
    """Identifies the frozen backbone's weights, whatever their source (imagenet, file, seed)."""
    head_params = {id(p) for p in head.parameters()}
    params = [p for p in model.parameters() if id(p) not in head_params]
    buffers = list(model.buffers())
    return tensor_digest(*params, *buffers)


class FeatureCache:
    """Computes backbone features once per (backbone, data, size, augmentation, view).

    Held in memory for the trials of this process and on disk for the other workers on
    the machine; a file lock makes concurrent workers compute a missing entry only once.
    `compute_seconds` adds up the seconds this object spent computing features (backbone
    passes; not loading them from disk or memory), so that a caller can charge the cache's
    cost to whatever it budgets (bench/transfer.py charges it to the method's epochs).
    """

    def __init__(self, config: FeatureCacheConfig, runtime: Runtime, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or Progress()
        self.runtime = runtime
        self.memory: dict[str, CachedFeatures] = {}
        self.digested: tuple[object, str] | None = None  # (data, digest of its pixels)
        self.backbones: dict[Hashable, str] = {}  # the weights' source -> backbone_digest
        self.compute_seconds = 0.0  # cumulative, of compute() only

    def views(self, aug: AugmentConfig) -> int:
        """Without random augmentation every view would be the same tensor: cache one."""
        return self.config.views if is_random(aug) else 1

    def key(self, model_name: str, backbone: str, data_digest: str, image_size: int, aug: AugmentConfig,
            mean: Sequence[float], std: Sequence[float]) -> str:
        views = self.views(aug)
        # Features extracted under bf16/fp16 autocast (a GPU worker) differ from fp32 ones (a CPU
        # worker on the same machine): each precision gets its own entry.
        precision = str(self.runtime.amp_dtype or torch.float32)
        parts = (model_name, backbone, data_digest, image_size, aug, tuple(mean), tuple(std), views, precision)
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def get(self, built, model_name: str, data, image_size: int, aug: AugmentConfig, *,
            source: Hashable | None = None) -> CachedFeatures:
        """The features of `built`'s backbone. `source`: where its weights come from (model,
        weights and seed: RunInputs.backbone_source), the same for every untrained backbone of
        a study; given, the backbone's digest is computed once for it, not on every trial."""
        data_digest = self.data_digest(data)
        key = self.key(model_name, self.backbone_digest(built, source), data_digest, image_size,
                       aug, built.mean, built.std)
        if key not in self.memory:
            # Keep one entry: a study has one backbone and a few augmentation settings at most.
            self.memory = {key: self.load_or_compute(key, built, data, image_size, aug)}
        return self.memory[key]

    def data_digest(self, data) -> str:
        """The digest of the data's pixels, which the features depend on.

        Hashing them takes seconds for a large data set, so it is done once per data object.
        The memo holds the object itself and checks it with `is`: keyed on id(data), a new
        data set allocated where a freed one was would have been given the old one's features.
        """
        if self.digested is None or self.digested[0] is not data:
            self.digested = (data, tensor_digest(data.train_images, data.val_images))
        return self.digested[1]

    def backbone_digest(self, built, source: Hashable | None) -> str:
        """backbone_digest of `built`, once per source: the key stays the digest of the weights
        (a file edited between two studies gets new features), but the weights are read (from
        the GPU, for a head-only trial) only by the first trial of a study in this process."""
        if source is None:
            return backbone_digest(built.model, built.head)
        if source not in self.backbones:
            self.backbones = {source: backbone_digest(built.model, built.head)}  # one study, one backbone
        return self.backbones[source]

    def load_or_compute(self, key: str, built, data, image_size: int, aug: AugmentConfig) -> CachedFeatures:
        path = self.config.directory / f"{key}.pt"
        with locked(path.with_suffix(".lock")):
            if path.exists():
                state = torch.load(path, map_location="cpu", weights_only=True)
                return CachedFeatures(tuple(state["train_views"]), state["val"])
            features = self.compute(built, data, image_size, aug, key)
            write_atomically(path, {"train_views": list(features.train_views), "val": features.val})
            return features

    def compute(self, built, data, image_size: int, aug: AugmentConfig, key: str) -> CachedFeatures:
        started = time.perf_counter()
        try:
            return self.extract_views(built, data, aug, key)
        finally:
            # Counted even when extraction fails half-way: those backbone passes were paid.
            self.compute_seconds += time.perf_counter() - started

    def extract_views(self, built, data, aug: AugmentConfig, key: str) -> CachedFeatures:
        views = self.views(aug)
        transform = train_transform(aug, built.mean, built.std)
        train = []
        for view in range(views):
            # Each view's augmentation is seeded by the cache key, so a view is the same
            # tensor whichever worker computes it.
            torch.manual_seed(int(key[:8], 16) + view)
            with self.progress.steps(f"features, view {view + 1}/{views}", len(data.train_images)) as advance:
                train.append(extract(built, data.train_images, transform, self.runtime, advance))
        with self.progress.steps("features, val", len(data.val_images)) as advance:
            val = extract(built, data.val_images, eval_transform(built.mean, built.std), self.runtime, advance)
        return CachedFeatures(tuple(train), val)


@torch.no_grad()
def extract(built, images: torch.Tensor, transform, runtime: Runtime, on_batch=None) -> torch.Tensor:
    """The head's input for every image: the frozen backbone's output, in eval mode."""
    captured: list[torch.Tensor] = []
    hook = built.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    model = built.model.to(runtime.device)
    was_training = model.training
    model.eval()
    try:
        for inputs, _ in ImageBatches(images, torch.zeros(len(images)), transform, runtime.device, EXTRACT_BATCH):
            (inputs,) = to_device((inputs,), runtime)
            with runtime.autocast():
                model(inputs)
            if on_batch is not None:
                on_batch(len(inputs))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, state: dict) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)
