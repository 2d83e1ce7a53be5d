"""bench/gpu_check.sh's CPU smoke mode: the prepared GPU script runs, so it cannot rot unnoticed.

Only that it runs and what it reports are checked, never its timings.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDS_CUDA = ("images=pinned-host", "compile ", "without native bf16")  # branches that only a GPU can take


def test_the_gpu_check_smoke_run_passes_every_branch_a_cpu_can_run():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    statuses = {name: status for status, name in re.findall(r"^(PASS|FAIL|SKIP) ([^:]+):", result.stdout, re.M)}
    assert len(statuses) == 20 and "FAIL" not in statuses.values()
    for name, status in statuses.items():
        if any(part in name for part in NEEDS_CUDA):
            assert status == "SKIP", name
        else:
            assert status == "PASS", name
    for branch in ("freeze=head cache=on", "freeze=head cache=off", "freeze=last_blocks images=device",
                   "freeze=full images=device", "amp=bf16 freeze=last_blocks", "amp=fp16+GradScaler freeze=full",
                   "oom huge batch -> PRUNED/oom, worker goes on", "two trials per device",
                   "resume across devices (cuda -> cpu)", "benchmark (e) resnet18",
                   "benchmark (e) efficientnet_lite0", "amp=fp16+GradScaler freeze=head cache=on",
                   "oom in the probe's feature extraction -> PRUNED/oom",
                   "pruned trial frees its model while the worker lives"):
        assert statuses.get(branch) == "PASS", branch
    # Each cache branch extracts its own features, in its own precision (they once all loaded
    # the first cache branch's fp32 features from one shared folder).
    for branch, precision in (("freeze=head cache=on", "float32"), ("amp=fp16+GradScaler freeze=head cache=on",
                                                                    "float16")):
        assert re.search(rf"^PASS {re.escape(branch)}: .*, features extracted here in {precision}$",
                         result.stdout, re.M), branch
    for model in ("resnet18", "efficientnet_lite0"):
        assert re.search(rf"^RATIO \(e\) {model} 32 px: .* smoke run: figures mean nothing", result.stdout, re.M)
    assert re.fullmatch(r"gpu_check: \d+ passed, 0 failed, \d+ skipped", result.stdout.rstrip().splitlines()[-1])
