#!/usr/bin/env bash
# Every CPU benchmark, one after the other (about 8 minutes on 2 cores). Each prints its
# figures, the machine, and a RATIO line against its baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/throughput.py
python bench/feature_cache.py
python bench/search_efficiency.py
python bench/service_overhead.py
