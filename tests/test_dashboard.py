"""The dashboard: one line for a busy port, the best model and the report as study-level artifacts
(only the current best kept), and a real browser (headless Chromium) rendering the study, its trials
and its artifacts. In CI (CI=true, or TUNER_REQUIRE_BROWSER=1 as .ci/run sets) Chromium must be
there; elsewhere the browser test skips without it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from conftest import cli_invoke as invoke, headless, run_head_only_study
from tuner.space._space import load_space
from tuner.service._storage import StorageSettings, open_storage
from tuner.config import StudyConfig
from tuner.service._open import create_study
from tuner.service._study_artifacts import BEST_MODEL, listed, publish_best_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_busy_port_is_one_error_line_naming_a_free_one(tmp_path, tiny_space):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    loaded = load_space(str(tiny_space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18")
    create_study(open_storage(StorageSettings(url=url), heartbeat=False), "s", config, note="# s")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke(["dashboard", "--storage", url, "--port", str(port)])
    found = re.fullmatch(rf"Error: port {port} is in use \(try --port (\d+)\)\n", result.stderr)
    assert (result.exit_code, result.stdout) == (1, "") and found, result.stderr
    suggested = int(found.group(1))
    assert suggested > port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", suggested))  # really free


def test_only_the_current_best_model_stays_a_study_artifact(tmp_path, tiny_space):
    """The study entry points at the best trial's own weights file (no second copy in the store),
    and an earlier best's entry is delisted when a better trial comes."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(StorageSettings(url=url), heartbeat=False)
    loaded = load_space(str(tiny_space))
    config = StudyConfig(space_name=loaded.name, space_text=loaded.text, data="digits", model="resnet18",
                         warm_start=False)
    study = create_study(storage, "s", config, note="# s")
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    ids = {}
    for number, value in enumerate([0.5, 0.7, 0.6]):
        weights = tmp_path / f"trial-{number}-weights.pt"
        torch.save({"model": {"w": torch.full((2,), float(number))}, "meta": {}}, weights)
        trial = study.ask()
        ids[number] = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(weights),
                                                       study_or_trial=trial)
        study.tell(trial, value)
        if study.best_trial.number == number:
            publish_best_model(study, storage, number, ids[number])
    assert listed(storage, "s") == {ids[1]: f"{BEST_MODEL}1.pt"}
    saved = torch.load(tmp_path / "artifacts" / ids[1], weights_only=True)
    assert saved["model"]["w"].tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-trial study run by `tuner run`, then `tuner report` (which uploads the report)."""
    root = tmp_path_factory.mktemp("dashboard")
    url = run_head_only_study(root, "shown")
    report = invoke(["report", "--study", "shown", "--storage", url, "--out", str(root / "report")])
    assert report.exit_code == 0, report.output
    again = invoke(["report", "--study", "shown", "--storage", url, "--out", str(root / "report")])
    assert again.exit_code == 0, again.output
    return root, url


def test_the_run_and_the_report_leave_one_best_model_and_one_report_as_study_artifacts(finished):
    root, url = finished
    storage = open_storage(StorageSettings(url=url), heartbeat=False)
    best = optuna.load_study(study_name="shown", storage=url).best_trial
    # The report ran twice: its second upload replaced the first.
    assert sorted(listed(storage, "shown").values()) == [
        f"{BEST_MODEL}{best.number}.pt", "report-index.html", "report-learning_curves.png",
        "report-optimization_history.png", "report-parallel_coordinate.png", "report-param_importances.png"]


def render(chromium: str, url: str, budget_ms: int = 20000) -> str:
    return headless(chromium, f"--virtual-time-budget={budget_ms}", "--dump-dom", url)


def test_a_real_browser_shows_the_study_its_trials_and_its_artifacts(finished, chromium):
    root, url = finished
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage", url, "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        studies = wait_for_dashboard(port, server)
        (summary,) = studies["study_summaries"]
        base = f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}"
        page = render(chromium, base)
        assert "shown" in page and "Study Artifacts" in page
        best = optuna.load_study(study_name="shown", storage=url).best_trial
        assert f"{BEST_MODEL}{best.number}.pt" in page
        assert "report-index.html" in page and "report-parallel_coordinate.png" in page
        trials = render(chromium, f"{base}/trials")
        assert "Trial 0" in trials and "Trial 1" in trials
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_dashboard(port: int, server: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the dashboard exited: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.25)
    pytest.fail("the dashboard did not answer in time")
