"""Tests of loading data (tuner.training._data and the modules beside it): real image files, digits, augmentation."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuner.training._augment import AugmentConfig
from tuner.training._data import load_data
from tuner.training._data_config import DataConfig
from tuner.training._data_sources import DataWarning
from tuner.training._data_sources import describe_source
from tuner.errors import DataError, TunerError

SIZE = 8  # the smallest allowed image_size keeps decoding fast
FRACTION_MESSAGE = "val_fraction must be between 0 and 1 (exclusive)"


# --- helpers that write real files ------------------------------------------


def save(path: Path, image: Image.Image, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def rgb(path: Path, color: tuple[int, int, int], size: int = 6) -> Path:
    return save(path, Image.new("RGB", (size, size), color))


def corrupt(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(200))
    return path


def palette_image(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([*color, *([0] * 765)])
    return image


def class_folder(root: Path, name: str, count: int, start: int = 0) -> None:
    """`count` distinct solid RGB images in root/name."""
    for index in range(start, start + count):
        rgb(root / name / f"{index}.png", (index * 9 % 256, 40 + index, 200 - index))


def write_csv(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def mixed_folder(root: Path) -> Path:
    """Classes of 5, 4, 3 images in mixed modes/formats, a corrupt .png, a .txt, hidden clutter."""
    a, b, c = root / "a", root / "b", root / "c"
    rgb(a / "rgb.png", (250, 0, 0))
    save(a / "gray.png", Image.new("L", (7, 5), 100))
    save(a / "alpha.png", Image.new("RGBA", (6, 6), (0, 250, 0, 255)))
    save(a / "palette.png", palette_image((0, 0, 250)))
    rgb(a / "UPPER.PNG", (120, 120, 0))
    corrupt(a / "broken.png")
    save(b / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 0, 0)))
    rgb(b / "photo.jpeg", (30, 60, 90), size=16)
    save(b / "anim.gif", palette_image((10, 200, 10)))
    rgb(b / "bitmap.bmp", (90, 60, 30))
    (b / "notes.txt").write_text("not an image")
    save(c / "scan.tif", Image.new("RGB", (6, 6), (5, 5, 200)))
    save(c / "web.webp", Image.new("RGB", (6, 6), (200, 5, 5)), lossless=True)
    rgb(c / "deep" / "nested.png", (70, 170, 70))
    # Hidden entries are neither classes nor skipped files.
    rgb(root / ".thumbnails" / "x.png", (1, 2, 3))
    (a / ".DS_Store").write_bytes(b"\x00\x01")
    rgb(a / ".ipynb_checkpoints" / "copy.png", (4, 5, 6))
    return root


def load_quietly(config: DataConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_data(config)


# --- image folder -------------------------------------------------------------


def test_mixed_folder_loads_with_one_warning_and_stratified_split(tmp_path):
    root = mixed_folder(tmp_path / "data")
    with pytest.warns(DataWarning) as record:
        data = load_data(DataConfig(str(root), image_size=SIZE, val_fraction=0.4, seed=0))

    data_warnings = [w for w in record if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1
    assert str(data_warnings[0].message).startswith(f"skipped 2 unreadable files in {root}")
    assert data.skipped == 2
    assert data.classes == ("a", "b", "c") and data.num_classes == 3
    assert data.multilabel is False
    for images in (data.train_images, data.val_images):
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (3, SIZE, SIZE)
    assert data.train_targets.dtype == torch.int64
    # round(n * 0.4) per class for n = 5, 4, 3 readable images
    assert data.val_targets.bincount(minlength=3).tolist() == [2, 2, 1]
    assert data.train_targets.bincount(minlength=3).tolist() == [3, 2, 2]


def test_folder_split_is_seeded(tmp_path):
    root = mixed_folder(tmp_path / "data")

    def split(seed: int) -> torch.Tensor:
        return load_quietly(DataConfig(str(root), SIZE, val_fraction=0.4, seed=seed)).val_images

    assert torch.equal(split(0), split(0))
    assert not torch.equal(split(0), split(1))


@pytest.mark.parametrize(
    ("counts", "fraction", "val_counts"),
    [
        ((10, 5), 0.2, [2, 1]),
        ((2, 3), 0.1, [1, 1]),  # round() gives 0: a class of 2+ still puts 1 in val
        ((2, 3), 0.9, [1, 2]),  # round() gives all: a class keeps 1 in train
        ((1, 4), 0.5, [0, 2]),  # a lone image stays in train
    ],
)
def test_stratified_split_sizes(tmp_path, counts, fraction, val_counts):
    class_folder(tmp_path, "a", counts[0])
    class_folder(tmp_path, "b", counts[1], start=counts[0])
    data = load_data(DataConfig(str(tmp_path), SIZE, val_fraction=fraction))
    assert data.val_targets.bincount(minlength=2).tolist() == val_counts
    assert data.train_targets.bincount(minlength=2).tolist() == [
        count - held for count, held in zip(counts, val_counts)
    ]


def test_clean_folder_emits_no_warning(tmp_path):
    class_folder(tmp_path, "x", 3)
    class_folder(tmp_path, "y", 3, start=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_data(DataConfig(str(tmp_path), SIZE))
    assert data.skipped == 0
    assert len(data.train_images) + len(data.val_images) == 6


@pytest.mark.parametrize(
    ("name", "image", "expected", "tolerance"),
    [
        ("gray.png", Image.new("L", (6, 6), 100), (100, 100, 100), 0),
        ("bilevel.png", Image.new("1", (6, 6), 1), (255, 255, 255), 0),
        ("opaque.png", Image.new("RGBA", (6, 6), (10, 20, 30, 255)), (10, 20, 30), 0),
        ("clear.png", Image.new("RGBA", (6, 6), (10, 20, 30, 0)), (255, 255, 255), 0),
        ("clear_gray.png", Image.new("LA", (6, 6), (50, 0)), (255, 255, 255), 0),
        ("palette.png", palette_image((200, 10, 20)), (200, 10, 20), 0),
        ("deep.png", Image.new("I;16", (6, 6), 257 * 100), (100, 100, 100), 0),
        ("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 0, 0)), (255, 0, 255), 8),
        ("scan.tiff", Image.new("RGB", (6, 6), (1, 128, 254)), (1, 128, 254), 0),
    ],
)
def test_any_mode_becomes_rgb(tmp_path, name, image, expected, tolerance):
    for copy in ("1", "2"):
        save(tmp_path / "x" / f"{copy}{name}", image)
    class_folder(tmp_path, "y", 2)

    data = load_data(DataConfig(str(tmp_path), SIZE, val_fraction=0.5))

    images = torch.cat([data.train_images, data.val_images])
    targets = torch.cat([data.train_targets, data.val_targets])
    pixels = images[targets == 0].permute(0, 2, 3, 1).reshape(-1, 3).int()
    assert (pixels - torch.tensor(expected)).abs().max() <= tolerance


def test_transparent_palette_is_composited_on_white(tmp_path):
    for copy in ("1", "2"):
        save(tmp_path / "x" / f"{copy}.png", palette_image((9, 9, 9)), transparency=0)
    class_folder(tmp_path, "y", 2)
    data = load_data(DataConfig(str(tmp_path), SIZE, val_fraction=0.5))
    images = torch.cat([data.train_images, data.val_images])
    targets = torch.cat([data.train_targets, data.val_targets])
    assert bool((images[targets == 0] == 255).all())


def test_train_val_folders_are_the_split(tmp_path):
    class_folder(tmp_path / "train", "a", 3)
    class_folder(tmp_path / "train", "b", 3, start=3)
    class_folder(tmp_path / "train", "c", 2, start=6)  # no val images: allowed
    class_folder(tmp_path / "val", "a", 1, start=8)
    class_folder(tmp_path / "val", "b", 2, start=9)

    data = load_data(DataConfig(str(tmp_path), SIZE, val_fraction=0.5))

    assert data.classes == ("a", "b", "c")
    assert data.train_targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert data.val_targets.tolist() == [0, 1, 1]
    assert data.val_images.shape == (3, 3, SIZE, SIZE)
    assert data.skipped == 0


# --- errors -------------------------------------------------------------------


def _missing_folder(tmp: Path):
    return str(tmp / "nope"), {}, f"data folder {tmp / 'nope'} does not exist"


def _file_not_folder(tmp: Path):
    path = rgb(tmp / "image.png", (1, 2, 3))
    return str(path), {}, f"data folder {path} is not a folder"


def _single_class(tmp: Path):
    class_folder(tmp, "a", 3)
    return str(tmp), {}, f"data folder {tmp}: needs at least 2 classes, found 1 ('a')"


def _no_class_folders(tmp: Path):
    rgb(tmp / "flat.png", (1, 2, 3))
    return str(tmp), {}, (
        f"data folder {tmp}: needs at least 2 classes, found 0 (expected one subfolder per class)"
    )


def _empty_class(tmp: Path):
    class_folder(tmp, "a", 3)
    (tmp / "b").mkdir()
    return str(tmp), {}, f"data folder {tmp}: class 'b' has no images"


def _class_of_text_files(tmp: Path):
    class_folder(tmp, "a", 3)
    write_csv(tmp / "b" / "readme.txt", ["hello"])
    return str(tmp), {}, f"data folder {tmp}: class 'b' has no images"


def _only_corrupt_images(tmp: Path):
    for index, path in enumerate(["a/1.png", "a/2.jpg", "b/1.png", "b/2.gif"]):
        corrupt(tmp / path, seed=index)
    return str(tmp), {}, f"data folder {tmp}: all 4 image files are unreadable"


def _class_of_corrupt_images(tmp: Path):
    class_folder(tmp, "a", 3)
    corrupt(tmp / "b" / "1.png")
    return str(tmp), {}, f"data folder {tmp}: class 'b' has no readable images"


def _val_class_missing_from_train(tmp: Path):
    class_folder(tmp / "train", "a", 2)
    class_folder(tmp / "train", "b", 2)
    class_folder(tmp / "val", "a", 1)
    class_folder(tmp / "val", "z", 1)
    return str(tmp), {}, f"data folder {tmp}: val/ has class(es) not in train/: 'z'"


def _one_image_per_class(tmp: Path):
    class_folder(tmp, "a", 1)
    class_folder(tmp, "b", 1, start=1)
    return str(tmp), {}, (
        f"data folder {tmp}: validation split is empty "
        "(each class needs at least 2 readable images)"
    )


def _config_error(kwargs: dict, message: str):
    def case(tmp: Path):
        return "digits", kwargs, message

    case.__name__ = "config_" + "_".join(f"{key}={value!r}" for key, value in kwargs.items())
    return case


def _csv_missing(tmp: Path):
    return str(tmp / "m.csv"), {}, f"CSV manifest {tmp / 'm.csv'} does not exist"


def _csv_empty(tmp: Path):
    path = tmp / "m.csv"
    path.write_text("")
    return str(path), {}, f"CSV manifest {path} is empty"


def _csv_header_only(tmp: Path):
    path = write_csv(tmp / "m.csv", ["path,label"])
    return str(path), {}, f"CSV manifest {path} has no rows"


def _csv_missing_column(tmp: Path):
    path = write_csv(tmp / "m.csv", ["path,class", "x.png,a"])
    return str(path), {}, (
        f"CSV manifest {path}: missing column(s) 'label' (header: 'path', 'class')"
    )


def _csv_missing_columns(tmp: Path):
    path = write_csv(tmp / "m.csv", ["file,class", "x.png,a"])
    return str(path), {}, (
        f"CSV manifest {path}: missing column(s) 'path', 'label' (header: 'file', 'class')"
    )


def _csv_missing_image(tmp: Path):
    rgb(tmp / "ok.png", (1, 2, 3))
    path = write_csv(tmp / "m.csv", ["path,label", "ok.png,a", "gone.png,b"])
    return str(path), {}, f"CSV manifest {path} row 3: image file {tmp / 'gone.png'} does not exist"


def _csv_empty_label(tmp: Path):
    rgb(tmp / "ok.png", (1, 2, 3))
    path = write_csv(tmp / "m.csv", ["path,label", "ok.png,a", "ok.png, ; "])
    return str(path), {}, f"CSV manifest {path} row 3: empty label"


def _csv_single_label(tmp: Path):
    rgb(tmp / "ok.png", (1, 2, 3))
    rgb(tmp / "ok2.png", (1, 2, 3))
    path = write_csv(tmp / "m.csv", ["path,label", "ok.png,a", "ok2.png,a;a"])
    return str(path), {}, f"CSV manifest {path}: needs at least 2 distinct labels, found 1 ('a')"


@pytest.mark.parametrize(
    "case",
    [
        _missing_folder,
        _file_not_folder,
        _single_class,
        _no_class_folders,
        _empty_class,
        _class_of_text_files,
        _only_corrupt_images,
        _class_of_corrupt_images,
        _val_class_missing_from_train,
        _one_image_per_class,
        *(
            _config_error({"val_fraction": value}, f"{FRACTION_MESSAGE}, got {value!r}")
            for value in (1.5, 0, 1.0, -0.1, math.nan, "0.2")
        ),
        _config_error({"image_size": 4}, "image_size must be an integer >= 8, got 4"),
        _config_error({"image_size": 32.0}, "image_size must be an integer >= 8, got 32.0"),
        _config_error({"seed": -1}, "seed must be a non-negative integer, got -1"),
        _config_error({"memory_limit": -1}, "memory_limit must be a non-negative number of bytes, got -1"),
        _config_error({"memory_limit": 1.5}, "memory_limit must be a non-negative number of bytes, got 1.5"),
        _csv_missing,
        _csv_empty,
        _csv_header_only,
        _csv_missing_column,
        _csv_missing_columns,
        _csv_missing_image,
        _csv_empty_label,
        _csv_single_label,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_load_errors(tmp_path, case):
    source, overrides, message = case(tmp_path)
    kwargs = {"image_size": SIZE, **overrides}
    with pytest.raises(DataError) as excinfo:
        load_quietly(DataConfig(source, **kwargs))
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, TunerError)


# --- CSV manifests -----------------------------------------------------------


def test_csv_single_label(tmp_path):
    for index in range(4):
        rgb(tmp_path / "img" / f"cat{index}.png", (10 + index, 0, 0))
        rgb(tmp_path / "img" / f"dog{index}.png", (0, 10 + index, 0))
    absolute = rgb(tmp_path / "elsewhere" / "dog4.png", (0, 99, 0))
    corrupt(tmp_path / "img" / "cat_bad.jpg")
    lines = ["label , path ,note"]  # other column order, padded names and extra columns are fine
    lines += [f"cat,img/cat{index}.png,x" for index in range(4)]
    lines += [f"dog,img/dog{index}.png," for index in range(4)]
    lines += [f"dog,{absolute},", "cat,img/cat_bad.jpg,", ""]
    # A spreadsheet-style byte-order mark must not hide the first column name.
    manifest = write_csv(tmp_path / "m.csv", lines, encoding="utf-8-sig")

    with pytest.warns(DataWarning, match=r"skipped 1 unreadable file in"):
        data = load_data(DataConfig(str(manifest), SIZE, val_fraction=0.25))

    assert data.multilabel is False
    assert data.classes == ("cat", "dog")
    assert data.skipped == 1
    assert data.train_targets.dtype == data.val_targets.dtype == torch.int64
    # 4 cats and 5 dogs readable: round(4 * 0.25) = 1, round(5 * 0.25) = 1
    assert data.val_targets.bincount(minlength=2).tolist() == [1, 1]
    assert data.train_targets.bincount(minlength=2).tolist() == [3, 4]
    # Cats are red, dogs green: every target must match its image.
    images = torch.cat([data.train_images, data.val_images])
    targets = torch.cat([data.train_targets, data.val_targets])
    assert (images[:, 1, 0, 0] > images[:, 0, 0, 0]).long().tolist() == targets.tolist()


def test_csv_multi_label(tmp_path):
    rows = ["a", "b", "a;b", "c ; a", "b", "c", "a;b;c", "c"]
    for index in range(len(rows)):
        rgb(tmp_path / f"{index}.png", (index * 20, 0, 0))
    manifest = write_csv(
        tmp_path / "m.csv", ["path,label", *(f"{i}.png,{labels}" for i, labels in enumerate(rows))]
    )

    data = load_data(DataConfig(str(manifest), SIZE, val_fraction=0.25, seed=3))

    assert data.multilabel is True
    assert data.classes == ("a", "b", "c")
    assert data.train_targets.dtype == data.val_targets.dtype == torch.float32
    assert data.train_targets.shape == (6, 3)
    assert data.val_targets.shape == (2, 3)
    images = torch.cat([data.train_images, data.val_images])
    targets = torch.cat([data.train_targets, data.val_targets])
    for image, target in zip(images, targets):
        labels = {part.strip() for part in rows[int(image[0, 0, 0]) // 20].split(";")}
        assert target.tolist() == [float(name in labels) for name in "abc"]


# --- digits -------------------------------------------------------------------


def test_digits(tmp_path):
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    data = load_data(DataConfig("digits", image_size=32, val_fraction=0.2, seed=0))

    assert data.classes == tuple(str(digit) for digit in range(10))
    assert data.multilabel is False and data.skipped == 0
    assert len(data.train_images) + len(data.val_images) == 1797
    assert len(data.val_images) == sum(round(count * 0.2) for count in counts)
    images = torch.cat([data.train_images, data.val_images])
    assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert torch.equal(images[:, 0], images[:, 2])  # gray replicated to 3 channels
    assert data.val_targets.bincount(minlength=10).tolist() == [round(c * 0.2) for c in counts]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("digits", "digits (scikit-learn 8x8 handwritten digits)"),
        ("/p/images", "image folder /p/images"),
        ("/p/list.CSV", "CSV manifest /p/list.CSV"),
    ],
)
def test_describe_source(source, expected):
    assert describe_source(source) == expected


# --- augmentation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, AugmentConfig()),
        ({"lr": 0.1, "aug_hflip": 0.5}, AugmentConfig(hflip=0.5)),
        (
            {"aug_crop_scale": 0.3, "aug_hflip": 1, "aug_rotation": 15.0, "aug_color_jitter": 0.4},
            AugmentConfig(crop_scale=0.3, hflip=1, rotation=15.0, color_jitter=0.4),
        ),
    ],
)
def test_augment_config_from_params(params, expected):
    assert AugmentConfig.from_params(params) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_scale": 0.0}, "crop_scale must be in (0, 1], got 0.0"),
        ({"crop_scale": 1.5}, "crop_scale must be in (0, 1], got 1.5"),
        ({"hflip": -0.1}, "hflip must be between 0 and 1, got -0.1"),
        ({"hflip": 1.1}, "hflip must be between 0 and 1, got 1.1"),
        ({"rotation": -5}, "rotation must be >= 0, got -5"),
        ({"rotation": math.inf}, "rotation must be a finite number, got inf"),
        ({"color_jitter": -0.5}, "color_jitter must be >= 0, got -0.5"),
        ({"hflip": "0.5"}, "hflip must be a finite number, got '0.5'"),
    ],
)
def test_augment_config_errors(kwargs, message):
    with pytest.raises(DataError) as excinfo:
        AugmentConfig(**kwargs)
    assert str(excinfo.value) == message


def test_augment_config_from_params_validates():
    with pytest.raises(DataError, match=r"^hflip must be between 0 and 1, got 2$"):
        AugmentConfig.from_params({"aug_hflip": 2})


# --- decoded images on disk ----------------------------------------------------------


def _presplit(tmp: Path) -> str:
    for split, start in (("train", 0), ("val", 10)):
        class_folder(tmp / split, "a", 3, start=start)
        class_folder(tmp / split, "b", 2, start=start + 3)
    return str(tmp)


def _folder_with_a_corrupt_file(tmp: Path) -> str:
    class_folder(tmp, "a", 4)
    class_folder(tmp, "b", 4, start=4)
    corrupt(tmp / "b" / "broken.png")
    return str(tmp)


def _manifest(tmp: Path) -> str:
    for index in range(6):
        rgb(tmp / f"{index}.png", (index * 40, 10, 10))
    return str(write_csv(tmp / "m.csv", ["path,label", *(f"{i}.png,{'ab'[i % 2]}" for i in range(6))]))


def mapped_files(folder: Path) -> list[str]:
    """This process's memory mappings of (deleted) files in `folder`."""
    with open("/proc/self/maps") as maps:
        return [line.split()[-2] for line in maps if str(folder) in line and line.rstrip().endswith("(deleted)")]


@pytest.mark.parametrize("make_source", [lambda tmp: "digits", _presplit, _folder_with_a_corrupt_file, _manifest],
                         ids=["digits", "presplit", "skipped_file", "manifest"])
def test_over_the_memory_limit_images_are_mapped_from_disk(tmp_path, make_source):
    source = make_source(tmp_path / "data")
    in_memory = load_quietly(DataConfig(source, SIZE))
    spill = tmp_path / "spill"
    on_disk = load_quietly(DataConfig(source, SIZE, memory_limit=0, spill_dir=str(spill)))
    assert (in_memory.on_disk, on_disk.on_disk) == (False, True)
    for name in ("train_images", "val_images", "train_targets", "val_targets"):
        assert torch.equal(getattr(on_disk, name), getattr(in_memory, name)), name
    # The images live in mapped files that were unlinked at once: nothing to clean up,
    # even after a crash.
    assert mapped_files(spill) and list(spill.iterdir()) == []


def test_the_limit_is_in_bytes_of_decoded_pixels(tmp_path):
    class_folder(tmp_path / "data", "a", 5)
    class_folder(tmp_path / "data", "b", 5, start=5)
    train_bytes = 8 * 3 * SIZE * SIZE  # 8 of 10 images train with val_fraction 0.2
    fits = load_data(DataConfig(str(tmp_path / "data"), SIZE, memory_limit=train_bytes))
    spills = load_data(DataConfig(str(tmp_path / "data"), SIZE, memory_limit=train_bytes - 1,
                                  spill_dir=str(tmp_path / "spill")))
    assert (fits.on_disk, spills.on_disk) == (False, True)


def test_an_unusable_spill_folder_is_a_data_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=rf"^cannot create a file for decoded images in {blocker}: "):
        load_data(DataConfig("digits", SIZE, memory_limit=0, spill_dir=str(blocker)))


# --- what counts as an unreadable file ------------------------------------------

class _RaisingFormat:
    """A real PIL format plugin for files starting with b"RAISE": opening one raises `error`."""

    error: BaseException = MemoryError()


def _raising_open(fp, filename=None):
    raise _RaisingFormat.error


@pytest.fixture
def raising_format():
    Image.init()
    Image.register_open("RAISETEST", _raising_open, lambda prefix: prefix[:5] == b"RAISE")
    yield _RaisingFormat
    Image.ID.remove("RAISETEST")
    del Image.OPEN["RAISETEST"]


@pytest.mark.parametrize(("error", "skipped"), [
    (SyntaxError("not a valid header"), True),
    (Image.DecompressionBombError("too many pixels"), True),
    (ValueError("bad mode"), True),
    (MemoryError(), False),  # the machine's trouble, not the file's: never "1 unreadable file"
    (KeyError("a bug"), False),
])
def test_only_decoding_errors_count_as_unreadable_files(tmp_path, raising_format, error, skipped):
    class_folder(tmp_path / "data", "a", 3)
    class_folder(tmp_path / "data", "b", 3, start=3)
    (tmp_path / "data" / "b" / "odd.png").write_bytes(b"RAISE" + bytes(100))
    raising_format.error = error
    config = DataConfig(str(tmp_path / "data"), 8)
    if skipped:
        with pytest.warns(DataWarning, match=r"skipped 1 unreadable file in .*: b/odd\.png$"):
            assert load_data(config).skipped == 1
    else:
        with pytest.raises(type(error)):
            load_quietly(config)
