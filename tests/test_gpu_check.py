"""bench/gpu_check.sh's CPU smoke mode: the prepared GPU script runs, so it cannot rot unnoticed.

Only that it runs and what it reports are checked, never its timings.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDS_CUDA = ("images=pinned-host", "compile ")  # branches that only a GPU can take


def test_the_gpu_check_smoke_run_passes_every_branch_a_cpu_can_run():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    statuses = {name: status for status, name in re.findall(r"^(PASS|FAIL|SKIP) ([^:]+):", result.stdout, re.M)}
    assert len(statuses) == 17 and "FAIL" not in statuses.values()
    for name, status in statuses.items():
        if any(part in name for part in NEEDS_CUDA):
            assert status == "SKIP", name
        elif name != "benchmark (e) efficientnet_lite0":  # PASS once that model is in tuner, SKIP before
            assert status == "PASS", name
    for branch in ("freeze=head cache=on", "freeze=head cache=off", "freeze=last_blocks images=device",
                   "freeze=full images=device", "amp=bf16 freeze=last_blocks", "amp=fp16+GradScaler freeze=full",
                   "oom huge batch -> PRUNED/oom, worker goes on", "two trials per device",
                   "resume across devices (cuda -> cpu)", "benchmark (e) resnet18"):
        assert statuses.get(branch) == "PASS", branch
    assert re.search(r"^RATIO \(e\) resnet18 32 px: .* smoke run: figures mean nothing", result.stdout, re.M)
    assert re.fullmatch(r"gpu_check: \d+ passed, 0 failed, \d+ skipped", result.stdout.rstrip().splitlines()[-1])
