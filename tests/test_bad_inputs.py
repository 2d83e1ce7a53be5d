"""Bad inputs: each gives one clear `Error:` line, a non-zero exit, no traceback, and no storage writes."""

from __future__ import annotations

import json

import sqlalchemy
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.cli import cli

SPACE_ERRORS = [
    ("broken yaml", "params: {lr: [1, 2\n", "Error: bad.yaml: invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("unknown key", "params:\n  lr: {type: float, low: 0.1, high: 1, lg: true}\n",
     "Error: bad.yaml: lr (float): unknown key 'lg' (allowed: high, log, low, prior, step, type, when)"),
    ("low > high", "params:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
     "Error: bad.yaml: lr.low must be <= high (0.01), got 0.1"),
    ("log with low 0", "params:\n  lr: {type: float, low: 0, high: 0.1, log: true}\n",
     "Error: bad.yaml: lr.low must be > 0 when log is true, got 0"),
    ("empty choices", "params:\n  optimizer: {type: categorical, choices: []}\n",
     "Error: bad.yaml: optimizer.choices must not be empty, got []"),
    ("when names unknown param", "params:\n  momentum: {type: float, low: 0.8, high: 0.9, when: {optim: sgd}}\n",
     "Error: bad.yaml: momentum.when names unknown parameter 'optim' (known: momentum, task)"),
    ("when names unknown value",
     "params:\n  optimizer: {type: categorical, choices: [adam, sgd]}\n"
     "  momentum: {type: float, low: 0.8, high: 0.9, when: {optimizer: sgdm}}\n",
     "Error: bad.yaml: momentum.when.optimizer: 'sgdm' is not a possible value of optimizer (possible: ['adam', 'sgd'])"),
    ("parameter the trainer does not know", "params:\n  learning_rate: {type: float, low: 0.1, high: 1}\n",
     "Error: bad.yaml: parameter 'learning_rate' is not one the trainer understands (known: freeze, "
     "unfreeze_blocks, unfreeze_every, head_init, lr, backbone_lr, optimizer, momentum, nesterov, weight_decay, batch_size, epochs, "
     "scheduler, step_size, step_gamma, plateau_factor, plateau_patience, cosine_min_lr_ratio, dropout, "
     "aug_crop_scale, aug_hflip, aug_rotation, aug_color_jitter, loss, label_smoothing, class_weighting, patience)"),
]


def _folder_single_class(tmp: Path) -> str:
    from PIL import Image

    (tmp / "one" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp / "one" / "a" / "x.png")
    return str(tmp / "one")


def _folder_empty(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _folder_only_corrupt(tmp: Path) -> str:
    for label in ("a", "b"):
        (tmp / "bad" / label).mkdir(parents=True)
        (tmp / "bad" / label / "x.png").write_bytes(b"not a png")
    return str(tmp / "bad")


DATA_ERRORS = [
    ("missing folder", lambda tmp: str(tmp / "nowhere"), "Error: data folder {data} does not exist"),
    ("empty folder", _folder_empty,
     "Error: data folder {data}: needs at least 2 classes, found 0 (expected one subfolder per class)"),
    ("single class", _folder_single_class, "Error: data folder {data}: needs at least 2 classes, found 1 ('a')"),
    ("only corrupt images", _folder_only_corrupt, "Error: data folder {data}: all 2 image files are unreadable"),
]


def assert_one_error(result, message: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines()[-1] == message
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [message]
    assert "Traceback" not in result.output


def storage_untouched(url: str) -> bool:
    """No file for SQLite; no tables in the (fresh) PostgreSQL database."""
    if url.startswith("sqlite"):
        return not Path(url.removeprefix("sqlite:///")).exists()
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def run_args(storage: str, **overrides: str) -> list[str]:
    options = {"--data": "digits", "--weights": "none", "--image-size": "16", "--n-trials": "2",
               "--storage": storage, "--study": "s", "--device": "cpu", **overrides}
    return ["run", *[part for pair in options.items() for part in pair]]


@pytest.mark.parametrize("label,body,message", SPACE_ERRORS, ids=[c[0] for c in SPACE_ERRORS])
def test_bad_space_files(label, body, message, tmp_path, storage_url):
    space = tmp_path / "bad.yaml"
    space.write_text(body)
    result = CliRunner().invoke(cli, run_args(storage_url, **{"--space": str(space)}))
    assert_one_error(result, message)
    assert storage_untouched(storage_url)


@pytest.mark.parametrize("label,make,message", DATA_ERRORS, ids=[c[0] for c in DATA_ERRORS])
def test_bad_data(label, make, message, tmp_path, storage_url):
    data = make(tmp_path)
    result = CliRunner().invoke(cli, run_args(storage_url, **{"--data": data}))
    assert_one_error(result, message.format(data=data))
    assert storage_untouched(storage_url)


@pytest.mark.parametrize(
    "overrides,message,code",
    [
        ({"--model": "resnet19"},
         "Error: unknown model 'resnet19'; run 'tuner models' to list them (did you mean: resnet18, resnet152, resnet101?)",
         1),
        # Ranges are click's: a usage error (exit 2) that names the flag as typed.
        ({"--n-trials": "0"}, "Error: Invalid value for '--n-trials': 0 is not in the range x>=1.", 2),
        ({"--n-trials": "-3"}, "Error: Invalid value for '--n-trials': -3 is not in the range x>=1.", 2),
        ({"--weights": "nothere.pt"},
         "Error: --weights must be imagenet, none or a path to a state dict file, got 'nothere.pt' (no such file)", 1),
        ({"--val-fraction": "1.5"}, "Error: Invalid value for '--val-fraction': 1.5 is not in the range 0<x<1.", 2),
    ],
    ids=["unknown model", "zero budget", "negative budget", "missing weights file", "bad val fraction"],
)
def test_bad_run_options(overrides, message, code, storage_url):
    result = CliRunner().invoke(cli, run_args(storage_url, **overrides))
    assert_one_error(result, message, code)
    assert storage_untouched(storage_url)


@pytest.mark.parametrize(
    "url,message",
    [
        ("notaurl", "Error: malformed storage URL 'notaurl'; expected e.g. sqlite:///tuner.db or "
                    "postgresql+psycopg://user:password@host:5432/db"),
        ("redis://127.0.0.1:6379/0", "Error: unsupported storage URL 'redis://127.0.0.1:6379/0': the scheme must "
                                     "be sqlite, postgresql or postgres"),
        ("mysql+pymysql://u:s3cret@db/x", "Error: storage URL 'mysql+pymysql://u:***@db/x': MySQL is not supported; "
                                          "use PostgreSQL (postgresql://user:password@host/db) for many workers, "
                                          "or SQLite on one machine"),
        ("mysql://u@db/x", "Error: storage URL 'mysql://u@db/x': MySQL is not supported; use PostgreSQL "
                           "(postgresql://user:password@host/db) for many workers, or SQLite on one machine"),
        ("postgresql+psycopg://u:s3cret@db:port/x", "Error: malformed storage URL 'postgresql+psycopg://u:***@db:port/x'; "
                                                    "expected e.g. sqlite:///tuner.db or "
                                                    "postgresql+psycopg://user:password@host:5432/db"),
        ("sqlite://", "Error: storage URL 'sqlite://' names no database file (sqlite:///path/to/file.db)"),
    ],
)
def test_malformed_storage_url(url, message):
    result = CliRunner().invoke(cli, run_args(url))
    assert_one_error(result, message)
    assert "s3cret" not in result.output


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_of_every_spelling_reach_the_same_database(postgres_url, tmp_path, scheme):
    """postgres:// (as many hosting services hand it out) and postgresql:// both mean psycopg 3."""
    from sqlalchemy.engine import make_url

    from tuner.service._storage import normalize_url

    url = make_url(postgres_url).set(drivername=scheme).render_as_string(hide_password=False)
    assert normalize_url(url).startswith("postgresql+psycopg://")
    created = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits",
                                       "--weights", "none", "--image-size", "16", "--n-trials", "1",
                                       "--artifacts", str(tmp_path / "art")])
    assert created.exit_code == 0, created.output
    listed = CliRunner().invoke(cli, ["studies", "--storage", url, "--format", "json"])
    assert [row["name"] for row in json.loads(listed.output)["studies"]] == ["s"]


def test_worker_for_a_study_that_does_not_exist(storage_url):
    # Make the storage exist with one other study, so only the name is wrong.
    import optuna

    optuna.create_study(storage=storage_url, study_name="other")
    result = CliRunner().invoke(cli, ["worker", "--study", "nope", "--storage", storage_url, "--device", "cpu"])
    assert_one_error(result, "Error: no study named 'nope' in this storage (studies: other)")
    assert optuna.get_all_study_names(storage=storage_url) == ["other"]


def test_worker_on_a_missing_sqlite_file_creates_nothing(tmp_path):
    db = tmp_path / "missing.db"
    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", f"sqlite:///{db}"])
    assert_one_error(result, f"Error: storage file {db} does not exist (create a study first)")
    assert not db.exists()


def test_config_mismatch_changes_nothing(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'x.db'}"
    runner = CliRunner()
    created = runner.invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits",
                                  "--weights", "none", "--image-size", "16", "--n-trials", "3"])
    assert created.exit_code == 0, created.output
    before = optuna.load_study(study_name="s", storage=url).user_attrs
    result = runner.invoke(cli, run_args(url, **{"--n-trials": "5", "--model": "mobilenet_v3_small"}))
    assert_one_error(
        result,
        "Error: study 's' already exists with a different config: --model (study has 'resnet18', given "
        "'mobilenet_v3_small'); --n-trials (study has 3, given 5; raise the budget with `tuner extend`). "
        "Use another --study name, or leave those options out to continue it",
    )
    study = optuna.load_study(study_name="s", storage=url)
    assert study.user_attrs == before and all(t.state.name == "WAITING" for t in study.trials)


@pytest.mark.parametrize("gpus", ["all", "3", "0,1"])
def test_gpus_naming_absent_gpus(gpus, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is for a machine without GPUs")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    # 16 px: the study only has to exist (digits at the space's 224 px took seconds to decode).
    created = CliRunner().invoke(cli, ["create", "--study", "s", "--storage", url, "--data", "digits",
                                       "--weights", "none", "--image-size", "16"])
    assert created.exit_code == 0, created.output
    result = CliRunner().invoke(cli, ["worker", "--study", "s", "--storage", url, "--gpus", gpus])
    assert_one_error(result, f"Error: --gpus {gpus}: no CUDA GPU is visible on this node (use --device cpu)")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--device", "tpu"], "Error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["--device", "gpu"], "Error: --device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        (["--device", "cuda:0"], "Error: --device cuda:0: no CUDA GPU is available here (use --device cpu)"),
        (["--device", "cuda"], "Error: --device cuda: no CUDA GPU is available here (use --device cpu)"),
    ],
)
def test_bad_device_writes_nothing(args, message, storage_url):
    """`--device gpu` used to create the study and its warm-start trials, then fail."""
    import torch

    if torch.cuda.is_available() and "gpu" not in args and "tpu" not in args:
        pytest.skip("this check is for a machine without GPUs")
    result = CliRunner().invoke(cli, run_args(storage_url, **dict(zip(args[::2], args[1::2]))))
    assert_one_error(result, message)
    assert storage_untouched(storage_url)


@pytest.mark.parametrize(
    "model,size,message",
    [
        ("vit_b_16", "32", "Error: vit_b_16 needs 224 px input, got 32 (--image-size 224)"),
        ("inception_v3", "32", "Error: inception_v3 needs at least 75 px input, got 32 (--image-size 75)"),
    ],
)
def test_a_model_that_cannot_take_the_image_size_writes_nothing(model, size, message, storage_url):
    """A dry forward pass at the real size: this used to create the study, print two
    tracebacks and leave a FAIL trial behind."""
    result = CliRunner().invoke(cli, run_args(storage_url, **{"--model": model, "--image-size": size}))
    assert_one_error(result, message)
    assert storage_untouched(storage_url)


def test_worker_exits_within_seconds_when_the_database_is_unreachable():
    import subprocess
    import sys
    import time

    url = "postgresql+psycopg://postgres:pw@127.0.0.1:1/tuner"  # nothing listens on port 1
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tuner", "worker", "--study", "s", "--storage", url],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    print(f"unreachable database: exit {result.returncode} after {elapsed:.1f}s")
    assert result.returncode == 1
    assert elapsed < 15
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: cannot open storage postgresql+psycopg://postgres:***@127.0.0.1:1/tuner: ")
    assert "pw@" not in result.stderr and "Traceback" not in result.stderr
