"""Inputs a new user tried: a huge --image-size, bad manifest labels, an empty --study, the best -> enqueue round
trip under --max-epochs, and imagenet weights with no cached file. Each is refused with one `Error:` line before
anything is written, or works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision

from tests.test_bad_inputs import assert_one_error, run_args, storage_untouched
from tuner.cli import cli
from tuner.errors import ModelError
from tuner.service._prepare import check_input_size
from tuner.training._data import DataConfig, load_data
from click.testing import CliRunner

GIB = 2**30

# --- 1. an input size whose decoded data cannot fit ------------------------------------------


def room():
    from tuner.training._spill import Room

    return Room(limit=1 * GIB, disk_free=10 * GIB, ram=4 * GIB, spill_dir=Path("/spill"))


@pytest.mark.parametrize(
    "count,size,problem",
    [
        (1000, 512, None),  # 0.73 GiB: in RAM
        (1000, 1024, None),  # 2.9 GiB: over the limit, and twice it fits on the spill's disk
        (1000, 1337, None),  # the largest size that fits, as the message below says
        (1000, 2048,
         "image size 2048 px: 1000 images decode to 11.7 GiB (images x 3 x 2048^2 bytes), more than the 1.0 GiB they "
         "may hold in RAM (--memory-limit) and more than half the 10.0 GiB free for the spill file in /spill; "
         "at most 1337 px fits (--image-size)"),
        (1, 20000,
         "image size 20000 px: decoding one image at 20000 px takes about 4.5 GiB of RAM, more than this machine's "
         "4.0 GiB; at most 18918 px fits (--image-size)"),
        (10**9, 8,
         "image size 8 px: 1000000000 images decode to 178.8 GiB (images x 3 x 8^2 bytes), more than the 1.0 GiB "
         "they may hold in RAM (--memory-limit) and more than half the 10.0 GiB free for the spill file in /spill; "
         "no image size fits (--image-size)"),
    ],
    ids=["in RAM", "spilled to disk", "largest", "neither", "one image over RAM", "no size fits"],
)
def test_what_fits_in_ram_and_on_the_spill_disk(count, size, problem):
    assert room().problem(count, size) == problem


def test_a_huge_image_size_is_refused_at_once_and_writes_nothing(tmp_path):
    """It used to decode for 107 s until the kernel killed the process at 22.5 GB, without a word."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(cli, run_args(url, **{"--image-size": "100000"}))
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: image size 100000 px: 1797 images decode to 49.0 TiB "
                           "(images x 3 x 100000^2 bytes), more than the "), line
    assert line.endswith(" px fits (--image-size)"), line
    assert_one_error(result, line)
    assert storage_untouched(url)
    assert not (tmp_path / "study-decoded").exists()


def test_a_size_over_the_memory_limit_that_fits_on_disk_is_accepted(tmp_path):
    data = load_data(DataConfig("digits", 16, memory_limit=0, spill_dir=str(tmp_path)))
    assert data.on_disk and data.train_images.shape[1:] == (3, 16, 16)


def test_a_model_whose_forward_cannot_fit_in_ram_is_refused_before_the_dry_run():
    """Found on the meta device: the dry forward pass itself would have been killed."""
    network = torchvision.models.resnet18(num_classes=2)
    with pytest.raises(ModelError, match=r"^resnet18 at 60000 px: one image's forward keeps about [0-9.]+ TiB "
                                         r"\(input and activations, for the backward pass\), more than this "
                                         r"machine's [0-9.]+ GiB of RAM \(--image-size\)$"):
        check_input_size(network, "resnet18", 60000)
    check_input_size(network, "resnet18", 32)  # a sane size still passes


# --- 2. manifest labels and rows -------------------------------------------------------------


def _manifest(tmp: Path, body: str) -> Path:
    from PIL import Image

    for index in range(4):
        Image.new("RGB", (12, 12), (index * 60, 0, 0)).save(tmp / f"{index}.png")
    path = tmp / "list.csv"
    path.write_text("path,label\n0.png,bag\n1.png,bag\n" + body)
    return path


MANIFEST_ERRORS = [
    ("empty label between separators", '2.png,sneaker;;bag\n3.png,sneaker\n',
     "row 4: empty label in 'sneaker;;bag' (labels are separated by ';')"),
    ("trailing separator", '2.png,sneaker;\n3.png,sneaker\n',
     "row 4: empty label in 'sneaker;' (labels are separated by ';')"),
    ("commas in a quoted label", '2.png,"sneaker,,bag"\n3.png,sneaker\n',
     "row 4: label 'sneaker,,bag' contains ','; separate several labels with ';' (cat;dog)"),
    ("unquoted commas: more fields than the header", '2.png,sneaker,,bag\n3.png,sneaker\n',
     "row 4: 4 fields, but the header has 2 (extra: '', 'bag'); separate several labels with ';' (cat;dog)"),
    ("same image, another label", '2.png,sneaker\n3.png,sneaker\n./1.png,sneaker\n',
     "row 6: image 1.png is already listed in row 3 (labels 'bag' there, 'sneaker' here); list each image once, "
     "with all its labels separated by ';'"),
    ("same image, same label", '2.png,sneaker\n3.png,sneaker\n1.png,bag\n',
     "row 6: image 1.png is already listed in row 3 (labels 'bag' there, 'bag' here); list each image once, "
     "with all its labels separated by ';'"),
]


@pytest.mark.parametrize("label,body,message", MANIFEST_ERRORS, ids=[case[0] for case in MANIFEST_ERRORS])
def test_bad_manifest_rows_are_one_error_and_write_nothing(label, body, message, tmp_path):
    manifest = _manifest(tmp_path, body)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(cli, run_args(url, **{"--data": str(manifest)}))
    assert_one_error(result, f"Error: CSV manifest {manifest} {message}")
    assert storage_untouched(url)


def test_a_good_manifest_still_loads(tmp_path):
    manifest = _manifest(tmp_path, "2.png,sneaker; bag\n3.png,sneaker;sneaker\n")
    data = load_data(DataConfig(str(manifest), 16, val_fraction=0.5))
    assert data.classes == ("bag", "sneaker") and data.multilabel


# --- 3. an empty --study ----------------------------------------------------------------------

STUDY_COMMANDS = ["run", "create", "worker", "status", "best", "export", "report", "extend", "stop", "enqueue",
                  "delete", "retrain"]


def test_the_table_names_every_command_that_takes_study():
    taking = {name for name, command in cli.commands.items()
              if any("--study" in param.opts for param in command.params)}
    assert taking == set(STUDY_COMMANDS)


@pytest.mark.parametrize("command", STUDY_COMMANDS)
@pytest.mark.parametrize("name", ["", "  "], ids=["empty", "blank"])
def test_an_empty_study_name_is_refused_by_every_command(command, name, tmp_path):
    """`run --study ""` used to run under the automatic name; `best --study ""` looked for a study called ''."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(cli, [command, "--study", name, "--storage", url])
    assert_one_error(result, "Error: Invalid value for '--study': a study name must not be empty", 2)
    assert storage_untouched(url)


# --- 4. best --format yaml -> enqueue under --max-epochs --------------------------------------


def test_best_yaml_of_a_capped_study_enqueues_and_reruns(tmp_path):
    """A study capped at 1 epoch over a 3..4 space: best writes `epochs: 1` (what the trial ran), which enqueue
    refused as outside the space. It is inside the space as the study runs it, so it queues, and reruns."""
    import yaml

    from tests.conftest import HEAD_ONLY_SPACE, cli_invoke

    space = tmp_path / "tiny.yaml"
    space.write_text(HEAD_ONLY_SPACE.replace("low: 2\n    high: 3", "low: 3\n    high: 4"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--study", "s", "--storage", url]
    ran = cli_invoke(["run", *common, "--space", str(space), "--data", "digits", "--image-size", "16",
                      "--weights", "none", "--max-epochs", "1", "--n-trials", "1", "--device", "cpu", "--quiet"])
    assert ran.exit_code == 0, ran.output
    best = cli_invoke(["best", *common, "--format", "yaml"])
    assert best.exit_code == 0, best.output
    params = yaml.safe_load(best.stdout)["params"]
    assert params["epochs"] == {"type": "fixed", "value": 1}
    (tmp_path / "best.yaml").write_text(best.stdout)

    assert cli_invoke(["extend", *common, "--n-trials", "2"]).exit_code == 0
    queued = cli_invoke(["enqueue", *common, "--params", str(tmp_path / "best.yaml"), "--format", "json"])
    assert queued.exit_code == 0, queued.output
    worked = cli_invoke(["worker", *common, "--device", "cpu", "--quiet"])
    assert worked.exit_code == 0, worked.output
    again = cli_invoke(["export", *common, "--format", "json"])
    second = __import__("json").loads(again.stdout)["trials"][1]
    assert second["state"] == "COMPLETE" and second["user_attrs"]["epochs_run"] == 1
    expected = {name: entry["value"] for name, entry in params.items() if name in second["params"]}
    assert {**second["params"], "epochs": 1} == expected


EPOCH_SPACES = {
    "range": "params:\n  epochs: {type: int, low: 5, high: 10}\n",
    "choices": "params:\n  epochs: {type: categorical, choices: [20, 8, 12]}\n",
}


@pytest.mark.parametrize(
    "space,value,cap,outcome",
    [
        ("range", 2, 2, {"epochs": 5}),  # the cap: the smallest value that runs it
        ("range", 7, 2, {"epochs": 7}),  # in the space: as given
        ("range", 7, None, {"epochs": 7}),
        ("choices", 6, 6, {"epochs": 8}),
        ("range", 3, 4, "epochs = 3 is outside the study's space (5 .. 10, at most 4 run under --max-epochs)"),
        ("range", 12, 12, "epochs = 12 is outside the study's space (5 .. 10, at most 12 run under --max-epochs)"),
        ("range", 2, None, "epochs = 2 is outside the study's space (5 .. 10)"),
    ],
)
def test_epochs_are_checked_against_the_space_as_the_capped_study_runs_it(space, value, cap, outcome):
    from tuner.errors import SpaceError
    from tuner.service._lifecycle import check_params
    from tuner.space._space import parse_space

    parsed = parse_space(EPOCH_SPACES[space], source="s.yaml", name="s")
    if isinstance(outcome, dict):
        assert check_params(parsed, {"epochs": value}, "single_label", "p", cap) == outcome
    else:
        with pytest.raises(SpaceError, match=f"^p: {__import__('re').escape(outcome)}$"):
            check_params(parsed, {"epochs": value}, "single_label", "p", cap)


# --- 5. imagenet weights: read from the hub cache, never downloaded ---------------------------


@pytest.fixture
def network_calls(offline_hub, monkeypatch):
    """Every name lookup or connection attempted (each still fails: there is no network)."""
    import socket

    calls: list[tuple] = []

    def record(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", record)
    monkeypatch.setattr(socket, "getaddrinfo", record)
    return calls


def _create(url: str):
    return CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits", "--model",
                                    "resnet18", "--weights", "imagenet", "--image-size", "32"])


def test_imagenet_weights_without_a_cached_file_are_one_error_and_no_download(tmp_path, offline_hub, network_calls):
    """torchvision used to print `Downloading: "https://download.pytorch.org/models/resnet18-f37072fd.pth"` and try."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = _create(url)
    cached = offline_hub / "resnet18-f37072fd.pth"
    message = (f"Error: cannot load imagenet weights for resnet18 (no cached file; tuner never downloads): put the "
               f"file https://download.pytorch.org/models/resnet18-f37072fd.pth at {cached}, or pass --weights none "
               "(random init) or --weights PATH (a local state dict)")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [message]
    assert "Downloading" not in result.output
    assert network_calls == []
    assert not (tmp_path / "torch").exists()  # not even the cache folder a download would make
    assert storage_untouched(url)


def test_imagenet_weights_load_from_the_cached_file_offline(tmp_path, offline_hub, network_calls):
    import torch

    from tuner.training._models import ModelSpec, build_model

    torch.manual_seed(5)
    saved = torchvision.models.resnet18().state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(saved, offline_hub / "resnet18-f37072fd.pth")

    result = _create(f"sqlite:///{tmp_path / 'study.db'}")
    assert result.exit_code == 0, result.output
    built = build_model(ModelSpec("resnet18", weights="imagenet", num_classes=10))
    assert torch.equal(built.model.conv1.weight, saved["conv1.weight"])
    assert network_calls == [] and "Downloading" not in result.output
