#!/usr/bin/env bash
# (e) Run on a machine with one CUDA GPU (an H100/H200 finishes in well under 5 minutes):
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import tuner" 2>/dev/null || python -m pip install -q -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 290 python bench/gpu_check.py "$@"
