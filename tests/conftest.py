"""Shared fixtures: real SQLite and PostgreSQL storages, small spaces, and image folders."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# A fast space for end-to-end tests: head-only or last block, 1-3 epochs, no augmentation cost.
TINY_SPACE = """\
description: Tiny test space.
settings:
  model: resnet18
  image_size: 16
params:
  freeze:
    type: categorical
    choices: [head, last_blocks]
  lr:
    type: float
    low: 1.0e-3
    high: 1.0e-2
    log: true
  backbone_lr:
    type: float
    low: 1.0e-5
    high: 1.0e-4
    log: true
    when: {freeze: last_blocks}
  optimizer:
    type: categorical
    choices: [adam, sgd]
  momentum:
    type: float
    low: 0.8
    high: 0.95
    when: {optimizer: sgd}
  batch_size:
    type: categorical
    choices: [64, 128]
  epochs:
    type: int
    low: 2
    high: 3
  loss:
    - {type: fixed, value: cross_entropy, when: {task: single_label}}
    - {type: fixed, value: bce_with_logits, when: {task: multi_label}}
  patience:
    type: fixed
    value: 5
"""


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory):
    """Keep the feature cache (and anything else under XDG_CACHE_HOME) out of the user's home;
    subprocess workers inherit it through the environment."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """In-process training on one intra-op thread. Every model here is tiny (16 px), so threads
    gain nothing, and on a shared 2-core box two spinning OpenMP threads per op made the
    in-process tests over twice as slow. (test_workers and test_reliability give their
    worker processes OMP_NUM_THREADS=1 for the same reason.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def postgres_required() -> bool:
    return os.environ.get("TUNER_REQUIRE_POSTGRES") == "1" or os.environ.get("CI", "").lower() == "true"


def postgres_admin_url() -> str:
    return os.environ.get("TUNER_TEST_POSTGRES_URL", POSTGRES_DEFAULT)


def _admin_engine():
    import sqlalchemy

    return sqlalchemy.create_engine(
        postgres_admin_url(), isolation_level="AUTOCOMMIT", pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    import sqlalchemy

    try:
        with _admin_engine().connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        if postgres_required():
            pytest.fail(f"PostgreSQL is required here but not reachable at {postgres_admin_url()}: {exc}")
        return False


@pytest.fixture
def postgres_url(postgres_available):
    """A fresh database for one test, dropped afterwards."""
    if not postgres_available:
        pytest.skip("PostgreSQL is not reachable (CI requires it; set TUNER_TEST_POSTGRES_URL)")
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"tuner_t_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def read_trials(url: str, study_name: str = "s") -> list:
    """The study's trials, read through a connection that is closed before returning.

    Optuna 5's RDBStorage has no __del__: a URL handed to load_study keeps its pooled connection
    open until the garbage collector reaches the engine, which in a long pytest process can be
    minutes. A test polling a study several times a second held 24 PostgreSQL connections that
    way, and a slower CI run hit the server's limit of 100 ("too many clients already")."""
    import optuna

    with opened_storage(url) as storage:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()


def open_connections(url: str, settle: float = 5.0) -> int:
    """Other clients of a PostgreSQL test database, once closed ones have had time to go (a
    server backend ends a moment after its client closes the socket)."""
    import time

    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND pid <> pg_backend_pid()")
    deadline = time.monotonic() + settle
    try:
        while True:
            with engine.connect() as connection:
                count = connection.exec_driver_sql(query).scalar()
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.1)
    finally:
        engine.dispose()


def unpooled_storage(url: str):
    """An Optuna RDBStorage that holds no connection between calls (no pool): a test may keep
    the study it loads through it, or drop it, without closing anything."""
    import optuna
    import sqlalchemy

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})


@contextmanager
def opened_storage(url: str):
    """An unpooled storage, its engine disposed on leaving."""
    storage = unpooled_storage(url)
    try:
        yield storage
    finally:
        storage.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Every storage test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of small images in mixed modes (L, RGBA, P, CMYK, RGB) and one corrupt file.

    Class 'bright' images are lighter than class 'dark' ones, so a model can learn them.
    """
    root = tmp_path / "images"
    modes = ("L", "RGBA", "P", "CMYK", "RGB")
    for label, offset in (("dark", 0), ("bright", 1)):
        for index in range(20):
            rng = np.random.default_rng(index * 2 + offset)
            base = 40 if label == "dark" else 200
            pixels = np.clip(rng.normal(base, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB")
            mode = modes[index % len(modes)]
            image = image.quantize(16) if mode == "P" else image.convert(mode)
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            if mode == "CMYK":
                image.save(folder / f"{index}.jpg", "JPEG")
            else:
                image.save(folder / f"{index}.png", "PNG")
    (root / "dark" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path and no network, so nothing can hang or download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # torch.hub.get_dir() prefers a directory set by set_dir() over TORCH_HOME.
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(2)
    yield tmp_path / "torch" / "hub" / "checkpoints"
    socket.setdefaulttimeout(old_timeout)


@pytest.fixture(scope="session", autouse=True)
def private_worker_count(tmp_path_factory):
    """Workers count the live workers of this machine in TUNER_WORKERS_DIR (tuner.service._cores): the
    tests' workers count among themselves, not with whatever else runs on the machine."""
    previous = os.environ.get("TUNER_WORKERS_DIR")
    os.environ["TUNER_WORKERS_DIR"] = str(tmp_path_factory.mktemp("workers"))
    yield
    if previous is None:
        os.environ.pop("TUNER_WORKERS_DIR", None)
    else:
        os.environ["TUNER_WORKERS_DIR"] = previous


def assert_backbone_equals(model: torch.nn.Module, state: dict[str, torch.Tensor], head_prefix: str) -> None:
    """Every tensor of `state` outside the head (keys not starting with head_prefix) is the model's."""
    own = model.state_dict()
    checked = [k for k in state if not k.startswith(head_prefix)]
    assert checked, "nothing to compare"
    for key in checked:
        assert torch.equal(own[key], state[key]), key


def drop_connection_once(new_state: str, *, waits: int) -> list[str]:
    """SQL that drops the connection named racer_a inside its first RUNNING -> `new_state`
    update of a trial, once another connection waits on that row's lock (up to `waits`
    tenths of a second): the update never commits, and racer_a must reconnect and retry."""
    name = f"drop_{new_state.lower()}"
    return [
        f"CREATE SEQUENCE {name}",
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF OLD.state = 'RUNNING' AND NEW.state = '{new_state}' AND current_setting('application_name') = 'racer_a'
         AND nextval('{name}') = 1 THEN
        FOR i IN 1..{waits} LOOP
          PERFORM pg_stat_clear_snapshot();
          EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND wait_event_type = 'Lock');
          PERFORM pg_sleep(0.1);
        END LOOP;
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(10);
      END IF;
      RETURN NEW;
    END $$""",
        f"CREATE TRIGGER {name} BEFORE UPDATE ON trials FOR EACH ROW EXECUTE FUNCTION {name}()",
    ]


# TINY_SPACE with the head as the only thing trained: the quickest real study (feature cache).
HEAD_ONLY_SPACE = re.sub(r"  backbone_lr:\n(    .*\n)+", "", TINY_SPACE).replace(
    "choices: [head, last_blocks]", "choices: [head]")


def cli_invoke(args: list[str]):
    """CliRunner on tuner's CLI; an unexpected exception is raised, not hidden in the result."""
    from click.testing import CliRunner

    from tuner.cli import cli

    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_head_only_study(root: Path, study: str) -> str:
    """A 2-trial head-only study on digits at 16 px, made and run by `tuner run`; its storage URL."""
    space = root / "tiny.yaml"
    space.write_text(HEAD_ONLY_SPACE)
    url = f"sqlite:///{root / 'study.db'}"
    ran = cli_invoke(["run", "--study", study, "--space", str(space), "--data", "digits", "--image-size", "16",
                      "--weights", "none", "--max-epochs", "2", "--n-trials", "2", "--storage", url,
                      "--artifacts", str(root / "artifacts"), "--device", "cpu", "--quiet"])
    assert ran.exit_code == 0, ran.output
    return url


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    """Headless Chromium's path. In CI (CI=true, or TUNER_REQUIRE_BROWSER=1 as .ci/run sets) it must be
    there; elsewhere a browser test skips without it."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("TUNER_REQUIRE_BROWSER") == "1":
            pytest.fail("CI needs Chromium for the browser tests (.ci/run installs it: apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def headless(chromium: str, *args: str) -> str:
    """Run headless Chromium with these arguments (--dump-dom URL, --screenshot=PNG URL); its stdout."""
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def test_artifacts(tmp_path) -> Path:
    """Where a test leaves files for people to look at (screenshots): $TUNER_TEST_ARTIFACTS (.ci/run sets
    it to test-artifacts/), else the test's temporary folder."""
    folder = Path(os.environ.get("TUNER_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def transfer_bench():
    """bench/transfer.py loaded as a module (bench/ is scripts, not a package), one per test module."""
    import importlib.util
    import sys

    name = f"bench_transfer_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
