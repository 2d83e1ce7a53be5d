"""docker-compose.yml, Dockerfile and .env.example: structure checks (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_postgres_service_has_volume_healthcheck_and_env_credentials(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert any(v.startswith("pgdata:") for v in postgres["volumes"]) and "pgdata" in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert postgres["environment"][key].startswith("${"), key  # from .env, never inline


def test_dashboard_is_published_on_localhost_with_the_shared_artifacts(compose):
    dashboard = compose["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    assert dashboard["command"][0] == "dashboard" and "/artifacts" in dashboard["command"]
    assert "artifacts:/artifacts" in dashboard["volumes"]
    assert "postgresql+psycopg://" in dashboard["environment"]["TUNER_STORAGE"]


def test_worker_reserves_gpus_waits_for_postgres_and_can_scale(compose):
    worker = compose["services"]["worker"]
    assert worker["command"][:1] == ["worker"] and worker["command"][worker["command"].index("--gpus") + 1] == "all"
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Scaling with --scale worker=N needs no fixed container name or host port.
    assert "container_name" not in worker and "ports" not in worker


def test_create_is_a_one_shot_profile(compose):
    create = compose["services"]["create"]
    assert create["profiles"] == ["setup"] and create["command"][0] == "create"


def test_env_example_has_every_variable_compose_uses_and_no_real_secret():
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(example)
    assert example["POSTGRES_PASSWORD"] == "change-me"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_dockerfile_uses_a_cuda_pytorch_base_and_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert 'pip install -e ".[s3]"' in text and 'ENTRYPOINT ["tuner"]' in text


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose plugin on this machine")
def test_docker_compose_config_validates(tmp_path):
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text())
    result = subprocess.run([*_compose_command(), "--env-file", str(env), "-f", str(ROOT / "docker-compose.yml"),
                             "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
