#!/usr/bin/env bash
# Every CPU benchmark, one after the other (about 70 minutes on 2 cores, 60 of them in
# transfer.py; `python bench/transfer.py --quick` takes about 5). Each prints its
# figures, the machine, and a RATIO line against its baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/throughput.py
python bench/feature_cache.py
python bench/transfer.py
python bench/service_overhead.py
