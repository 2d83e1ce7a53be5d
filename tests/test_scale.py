"""bench/scale.py (16 workers on PostgreSQL) runs, in a 3-worker smoke mode: its checks hold.
(Its figures are for the README; a test checks that it runs and what it checks, never timings.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import postgres_admin_url

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def test_the_scale_bench_holds_with_three_workers(postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not reachable (CI requires it; set TUNER_TEST_POSTGRES_URL)")
    result = subprocess.run(
        [sys.executable, str(BENCH), "--workers", "3", "--trials", "30", "--postgres", postgres_admin_url()],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checks = [line.strip() for line in lines if line.strip().startswith(("PASS", "FAIL"))]
    assert len(checks) == 6 and all(line.startswith("PASS") for line in checks), result.stdout
    assert lines[-1] == "SCALE HELD: 3 workers, 30 trials"
