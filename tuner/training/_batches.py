"""Mini-batches of decoded images moved to the device whole, and augmented there as a batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from tuner.training._augment import AugmentConfig
from tuner.training._data import ImageData
from tuner.errors import DataError

# RandomResizedCrop's default aspect-ratio range, as log-ratios.
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))

# Decoded images move to the GPU once per worker when they take at most this share of
# its free memory (leaving room for the model, and for other trials on the same GPU).
DEVICE_SHARE = 0.2

Transform = Callable[[torch.Tensor], torch.Tensor]


def same_device(tensors: Sequence[torch.Tensor], what: str) -> torch.device:
    """The one device all `tensors` are on; a DataError naming each device when they differ.

    An index on one device cannot select from a tensor on another (PyTorch refuses a CUDA
    index into a CPU tensor), so tensors sliced together must live together.
    """
    devices = [tensor.device for tensor in tensors]
    if len(set(devices)) > 1:
        raise DataError(f"{what} must be on one device, got {', '.join(map(str, devices))}")
    return devices[0]


@dataclass(frozen=True, eq=False)
class PlacedSplit:
    """One split's uint8 images and their targets, always on the same device."""

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        same_device((self.images, self.targets), "a split's images and targets")

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device) -> "PlacedSplit":
        return PlacedSplit(self.images.to(device), self.targets.to(device))


@dataclass(frozen=True, eq=False)
class PlacedImages:
    """A dataset's train and val splits where the batches are sliced from, on one device."""

    train: PlacedSplit
    val: PlacedSplit

    def __post_init__(self) -> None:
        same_device((self.train.images, self.val.images), "the train and val splits")

    @property
    def device(self) -> torch.device:
        return self.train.device


def place_images(data: ImageData, device: torch.device) -> PlacedImages:
    """On a GPU with room for them, the images live there for the whole study: no copies per batch.

    Images and targets move together, as one object, so a batch's index always finds both
    on its own device.
    """
    host = PlacedImages(PlacedSplit(data.train_images, data.train_targets),
                        PlacedSplit(data.val_images, data.val_targets))
    if device.type == "cuda":
        size = sum(t.nbytes for t in (data.train_images, data.val_images, data.train_targets, data.val_targets))
        free, _ = torch.cuda.mem_get_info(device)
        if size <= DEVICE_SHARE * free:
            return PlacedImages(host.train.to(device), host.val.to(device))
    return host


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> Transform:
    """uint8 images (one, or a batch N x 3 x S x S) to normalized float32, deterministically."""
    return v2.Compose(_normalization(mean, std))


def train_transform(aug: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Random augmentation of a uint8 batch, then normalization; eval_transform when all is off."""
    normalize = eval_transform(mean, std)
    if not is_random(aug):
        return normalize
    return BatchAugment(aug, normalize)


def is_random(aug: AugmentConfig) -> bool:
    return aug.crop_scale < 1.0 or aug.hflip > 0 or aug.rotation > 0 or aug.color_jitter > 0


class BatchAugment:
    """Augments a whole uint8 batch where it lives (GPU or CPU), each image with its own draw.

    A v2 transform called on a batch draws one set of parameters for all of it: every
    image would get the same crop and flip. Here each image gets its own crop, flip,
    rotation and colour factors, drawn as tensors, and the batch is transformed by a few
    batched kernels instead of a Python loop over images. Crop, flip and rotation are one
    affine sampling grid, so the image is interpolated once rather than three times; the
    crop's area and aspect ratio follow RandomResizedCrop (clamped to the image instead of
    retried), and a rotated crop takes its corners from the surrounding image where it can.
    Colour jitter blends brightness, contrast and saturation as v2.ColorJitter does.
    Randomness comes from the device's global generator, which the trainer reseeds every
    epoch, so a resumed trial repeats its augmentations.
    """

    def __init__(self, aug: AugmentConfig, normalize: Transform) -> None:
        self.aug = aug
        self.normalize = normalize

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = v2.functional.to_dtype(images, torch.float32, scale=True)
        if self.aug.crop_scale < 1.0 or self.aug.rotation > 0:
            batch = self.warp(batch)
        elif self.aug.hflip > 0:
            flip = self.uniform(batch, 0.0, 1.0) < self.aug.hflip
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        if self.aug.color_jitter > 0:
            batch = self.jitter(batch)
        return self.normalize(batch)

    @staticmethod
    def uniform(batch: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.empty(len(batch), device=batch.device).uniform_(low, high)

    def warp(self, batch: torch.Tensor) -> torch.Tensor:
        """Crop, flip and rotate every image by its own affine map, in one grid_sample."""
        aug = self.aug
        ones = torch.ones(len(batch), device=batch.device)
        scale_x, scale_y, shift_x, shift_y = ones, ones, ones * 0, ones * 0
        if aug.crop_scale < 1.0:
            area = self.uniform(batch, aug.crop_scale, 1.0)
            ratio = self.uniform(batch, *LOG_RATIO).exp()
            # Fractions of the image's width and height; the crop's centre keeps it inside.
            scale_x, scale_y = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
            shift_x = self.uniform(batch, -1.0, 1.0) * (1 - scale_x)
            shift_y = self.uniform(batch, -1.0, 1.0) * (1 - scale_y)
        if aug.hflip > 0:
            scale_x = torch.where(self.uniform(batch, 0.0, 1.0) < aug.hflip, -scale_x, scale_x)
        angle = self.uniform(batch, -1.0, 1.0) * math.radians(aug.rotation) if aug.rotation > 0 else ones * 0
        cos, sin = angle.cos(), angle.sin()
        # Output pixel (u, v) samples the input at shift + diag(scale) @ rotation @ (u, v).
        theta = torch.stack([
            torch.stack([scale_x * cos, -scale_x * sin, shift_x], dim=1),
            torch.stack([scale_y * sin, scale_y * cos, shift_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def jitter(self, batch: torch.Tensor) -> torch.Tensor:
        """Per-image brightness, contrast and saturation factors in [1 - s, 1 + s] (s = strength)."""
        low, high = max(0.0, 1 - self.aug.color_jitter), 1 + self.aug.color_jitter
        brightness, contrast, saturation = (self.uniform(batch, low, high).view(-1, 1, 1, 1) for _ in range(3))
        batch = (batch * brightness).clamp(0, 1)
        mean = v2.functional.rgb_to_grayscale(batch).mean(dim=(-3, -2, -1), keepdim=True)
        batch = (contrast * batch + (1 - contrast) * mean).clamp(0, 1)
        gray = v2.functional.rgb_to_grayscale(batch)
        return (saturation * batch + (1 - saturation) * gray).clamp(0, 1)


def _normalization(mean: Sequence[float], std: Sequence[float]) -> list[Transform]:
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"mean and std need 3 values each (RGB), got {list(mean)} and {list(std)}")
    if any(value <= 0 for value in std):
        raise DataError(f"std values must be > 0, got {list(std)}")
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class TensorBatches:
    """Mini-batches of tensors by slicing whole batches: no per-sample indexing or collation.

    The shuffled order is `torch.randperm(n, generator)`, drawn afresh at each iteration.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> None:
        if len({len(tensor) for tensor in tensors}) != 1:
            raise DataError(f"tensors must have the same length, got {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.device = same_device(tensors, "tensors batched together")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> Iterator[torch.Tensor]:
        """The index chunks of one pass."""
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for chunk in order.split(self.batch_size):
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield chunk

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for chunk in self.order():
            yield self.take(chunk)

    def take(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        index = chunk.to(self.device)
        return tuple(tensor[index] for tensor in self.tensors)


class _Chunks(torch.utils.data.Sampler):
    """A TensorBatches' index chunks as a DataLoader sampler (one item = one whole batch)."""

    def __init__(self, batches: TensorBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches.order()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batches: TensorBatches) -> None:
        self.batches = batches

    def __getitem__(self, chunk: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.batches.take(chunk)


class ImageBatches:
    """Batches of decoded uint8 images and their targets, moved to `device`, then transformed.

    Moving uint8 and transforming on the device sends a quarter of the bytes a float
    pipeline would, and the augmentation runs as batched kernels next to the model.
    With `num_workers` > 0 a DataLoader's processes slice the batches (worth it when the
    images are memory-mapped from disk, or on a GPU fed from host memory); with 0 the
    batches are sliced in this process, which is fastest for in-memory images on a CPU.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Transform,
                 device: torch.device, batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 num_workers: int = 0) -> None:
        self.batches = TensorBatches((images, targets), batch_size, shuffle=shuffle, generator=generator,
                                     drop_last=drop_last)
        self.transform = transform
        self.device = device
        self.loader = None
        # Loader processes slice host memory only: a CUDA tensor cannot be used in a forked
        # process, and images already on the GPU gain nothing from them.
        if num_workers > 0 and self.batches.device.type == "cpu":
            cuda = device.type == "cuda"
            # Persistent workers keep their processes (not their RNG: batches are slices and
            # all randomness is drawn in this process) from epoch to epoch.
            self.loader = torch.utils.data.DataLoader(
                _Rows(self.batches), sampler=_Chunks(self.batches), batch_size=None,
                num_workers=num_workers, pin_memory=cuda, persistent_workers=True,
                # The loader draws its workers' base seed from this generator instead of the
                # global one, so adding loader processes leaves the augmentation draws as they are.
                generator=torch.Generator(),
            )

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        source = self.loader if self.loader is not None else self.batches
        cuda = self.device.type == "cuda"
        for images, targets in source:
            if cuda and images.device.type == "cpu" and self.loader is None:
                images = images.pin_memory()  # so that the copy below overlaps compute
            images = images.to(self.device, non_blocking=cuda)
            yield self.transform(images), targets.to(self.device, non_blocking=cuda)
