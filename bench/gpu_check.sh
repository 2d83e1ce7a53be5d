#!/usr/bin/env bash
# (e) One prepared run for a lent CUDA GPU (an H100/H200 finishes in well under 5 minutes):
#   bash bench/gpu_check.sh              every CUDA branch PASS/FAIL/SKIP, then benchmark (e)
#   bash bench/gpu_check.sh --cpu-smoke  the same code on a CPU with tiny models (CUDA-only branches SKIP);
#                                        tests/test_gpu_check.py runs it, so the script cannot rot
# Extra arguments go to bench/gpu_check.py (e.g. --only oom). Exit status 1 when a branch FAILs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import tuner" 2>/dev/null || python -m pip install -q -e .
if [[ " $* " != *" --cpu-smoke "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
timeout 290 python bench/gpu_check.py "$@"
