"""Batched augmentation on the batch's device, and the batch iterators the trainer reads."""

from __future__ import annotations

import pytest
import torch

from tuner.training._batches import ImageBatches, PlacedImages, PlacedSplit, TensorBatches, eval_transform, place_images, train_transform
from tuner.training._augment import AugmentConfig
from tuner.training._data import ImageData
from tuner.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def random_images(count: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def same_image(count: int = 64, size: int = 16) -> torch.Tensor:
    """One asymmetric image repeated: any difference between outputs is the augmentation's."""
    return random_images(1, size).expand(count, -1, -1, -1).contiguous()


def differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: whether the two batches differ."""
    return ~torch.isclose(a, b, atol=1e-5).flatten(1).all(1)


ALL_ON = AugmentConfig(crop_scale=0.5, hflip=0.5, rotation=20, color_jitter=0.3)


def test_train_transform_makes_a_normalized_float_batch():
    output = train_transform(ALL_ON, MEAN, STD)(random_images())
    assert output.dtype == torch.float32 and output.shape == (8, 3, 16, 16)
    assert bool(torch.isfinite(output).all())
    # Before normalization every value is a pixel in [0, 1].
    pixels = output * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_train_transform_without_augmentation_equals_eval():
    images = random_images()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(train_transform(AugmentConfig(), MEAN, STD)(images), eval_transform(MEAN, STD)(images))
    # Nothing random was drawn: dropout later in the step sees the same generator state.
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_transform_is_deterministic_and_normalizes():
    transform = eval_transform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = random_images()
    assert torch.equal(transform(images), transform(images))
    white = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(transform(white), torch.full((2, 3, 8, 8), 2.0))


def test_certain_hflip_mirrors_every_image():
    images = random_images()
    flipped = train_transform(AugmentConfig(hflip=1.0), MEAN, STD)(images)
    assert torch.equal(flipped, eval_transform(MEAN, STD)(images).flip(-1))


def test_certain_hflip_inside_the_warp_mirrors_too():
    # With a rotation of (almost) nothing the flip goes through the affine grid instead.
    images = random_images()
    flipped = train_transform(AugmentConfig(hflip=1.0, rotation=1e-9), MEAN, STD)(images)
    assert torch.allclose(flipped, eval_transform(MEAN, STD)(images).flip(-1), atol=1e-4)


@pytest.mark.parametrize(
    "aug",
    [AugmentConfig(hflip=0.5), AugmentConfig(crop_scale=0.3), AugmentConfig(rotation=45),
     AugmentConfig(color_jitter=0.8), ALL_ON],
    ids=["hflip", "crop", "rotation", "color_jitter", "all"],
)
def test_each_image_of_a_batch_gets_its_own_draw(aug):
    # A v2 transform called on a batch would treat all 64 copies alike.
    images = same_image()
    torch.manual_seed(0)
    output = train_transform(aug, MEAN, STD)(images)
    plain = eval_transform(MEAN, STD)(images)
    changed = differs(output, plain)
    assert changed.any(), "the augmentation never changed the image"
    assert differs(output, output[:1].expand_as(output)).any(), "every copy got the same augmentation"
    if aug == AugmentConfig(hflip=0.5):
        assert 16 < int(changed.sum()) < 48  # about half flipped


def test_crop_zooms_into_the_image():
    # A left-dark, right-bright image: a crop shows a narrower band around the edge, so
    # the mean over many crops stays near the middle while single crops vary widely.
    images = torch.zeros(256, 3, 16, 16, dtype=torch.uint8)
    images[..., 8:] = 255
    torch.manual_seed(0)
    output = train_transform(AugmentConfig(crop_scale=0.2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(images)
    brightness = output.mean(dim=(1, 2, 3))
    assert brightness.min() < 0.3 and brightness.max() > 0.7
    assert 0.35 < float(brightness.mean()) < 0.65


def test_augmentation_repeats_under_the_same_seed():
    transform = train_transform(ALL_ON, MEAN, STD)
    images = random_images()
    torch.manual_seed(5)
    first = transform(images)
    torch.manual_seed(5)
    assert torch.equal(transform(images), first)


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ((0.5, 0.5), (0.2, 0.2, 0.2), "mean and std need 3 values each (RGB), got [0.5, 0.5] and [0.2, 0.2, 0.2]"),
        ((0.5, 0.5, 0.5), (0.2, 0.0, 0.2), "std values must be > 0, got [0.2, 0.0, 0.2]"),
    ],
)
def test_normalization_errors(mean, std, message):
    with pytest.raises(DataError) as excinfo:
        eval_transform(mean, std)
    assert str(excinfo.value) == message


# --- batch iterators ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "target_shape"),
    [(torch.arange(10) % 3, (4,)), (torch.eye(5)[torch.arange(10) % 5], (4, 5))],
    ids=["single_label", "multi_label"],
)
def test_image_batches_transform_whole_batches(targets, target_shape):
    images = random_images(10)
    batches = list(ImageBatches(images, targets, eval_transform(MEAN, STD), CPU, 4))
    assert [len(batch_targets) for _, batch_targets in batches] == [4, 4, 2]
    first_images, first_targets = batches[0]
    assert first_images.dtype == torch.float32 and first_images.shape == (4, 3, 16, 16)
    assert torch.equal(first_images, eval_transform(MEAN, STD)(images[:4]))
    assert first_targets.shape == target_shape and first_targets.dtype == targets.dtype


def test_image_batches_shuffle_like_tensor_batches_over_features():
    # Cached features and images must be visited in the same order for the cache to
    # reproduce the uncached run.
    images, targets = random_images(10), torch.arange(10)
    image_order = [t.tolist() for _, t in ImageBatches(
        images, targets, eval_transform(MEAN, STD), CPU, 3, shuffle=True,
        generator=torch.Generator().manual_seed(7), drop_last=True)]
    feature_order = [t.tolist() for _, t in TensorBatches(
        (torch.randn(10, 4), targets), 3, shuffle=True, generator=torch.Generator().manual_seed(7), drop_last=True)]
    assert image_order == feature_order
    assert len(image_order) == 3 and sorted(sum(image_order, [])) != list(range(9))  # shuffled, last dropped


def test_loader_processes_give_the_same_batches():
    images, targets = random_images(10), torch.arange(10)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = ImageBatches(images, targets, eval_transform(MEAN, STD), CPU, 4, shuffle=True,
                              generator=torch.Generator().manual_seed(1), num_workers=workers)
        return [b for pair in loader for b in pair]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(1), strict=True))


@pytest.mark.parametrize(
    ("tensors", "batch_size", "message"),
    [
        ((torch.zeros(3), torch.zeros(2)), 2, "tensors must have the same length, got [3, 2]"),
        ((torch.zeros(3),), 0, "batch_size must be >= 1, got 0"),
        # The GPU crash of issue 16: images moved to a GPU, their targets left on the CPU.
        ((torch.zeros(3, device="meta"), torch.zeros(3)), 2, "tensors batched together must be on one device, "
                                                            "got meta, cpu"),
    ],
)
def test_tensor_batches_errors(tensors, batch_size, message):
    with pytest.raises(DataError) as excinfo:
        TensorBatches(tensors, batch_size)
    assert str(excinfo.value) == message


def test_images_stay_in_host_memory_on_cpu():
    data = ImageData(random_images(4), torch.arange(4), random_images(2), torch.arange(2), ("a", "b"), False, 0)
    placed = place_images(data, CPU)
    assert placed.train.images is data.train_images and placed.val.images is data.val_images
    assert placed.train.targets is data.train_targets and placed.val.targets is data.val_targets
    assert placed.device == CPU


@pytest.mark.parametrize("build", [
    lambda: PlacedSplit(torch.zeros(2, 3, 4, 4, device="meta"), torch.zeros(2)),
    lambda: PlacedImages(PlacedSplit(torch.zeros(2, 3, 4, 4), torch.zeros(2)),
                         PlacedSplit(torch.zeros(1, 3, 4, 4, device="meta"), torch.zeros(1, device="meta"))),
])
def test_placed_images_refuse_tensors_on_two_devices(build):
    with pytest.raises(DataError, match="must be on one device, got"):
        build()


def test_a_split_moves_its_images_and_targets_together():
    moved = PlacedSplit(random_images(2), torch.arange(2)).to(torch.device("meta"))
    assert moved.images.device.type == moved.targets.device.type == "meta"


def test_image_batches_with_images_off_the_host_slice_in_this_process():
    # Loader processes cannot use tensors on a GPU (nor the meta device standing in for one).
    images, targets = torch.zeros(4, 3, 2, 2, device="meta"), torch.zeros(4, device="meta")
    loader = ImageBatches(images, targets, lambda x: x, torch.device("meta"), 2, num_workers=2)
    assert loader.loader is None
    assert [tuple(t.shape) for t in next(iter(loader))] == [(2, 3, 2, 2), (2,)]


def test_batches_of_images_mapped_from_disk_match_those_in_memory(tmp_path):
    from tuner.training._data import load_data
    from tuner.training._data_config import DataConfig

    in_memory = load_data(DataConfig("digits", 8))
    on_disk = load_data(DataConfig("digits", 8, memory_limit=0, spill_dir=str(tmp_path)))
    assert on_disk.on_disk

    def batches(data: ImageData, workers: int) -> list[torch.Tensor]:
        loader = ImageBatches(data.train_images, data.train_targets, train_transform(ALL_ON, MEAN, STD), CPU, 256,
                              shuffle=True, generator=torch.Generator().manual_seed(3), num_workers=workers)
        torch.manual_seed(0)
        return [b for pair in loader for b in pair]

    # Loader processes read the mapped file too (it was unlinked, but their mapping is inherited).
    assert all(torch.equal(a, b) for a, b in zip(batches(in_memory, 0), batches(on_disk, 1), strict=True))
