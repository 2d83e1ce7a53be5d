"""Workers started one by one on one machine: each with a thread per core vs its share of the cores.

Three `tuner worker` processes started by hand, a second apart, on one study: resnet18 at
16 px on digits, full fine-tuning, one epoch per trial, one trial each. The baseline gives
each worker OMP_NUM_THREADS=<cores>, which is what every worker did before they counted
each other (torch's default: one thread per core). The other run leaves OMP_NUM_THREADS
unset, so the workers share the cores (tuner.service._cores). Prints the seconds per trial (one
epoch plus its validation) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tuner.service._cores import machine_cores  # noqa: E402

SPACE = """\
description: Full fine-tuning, one epoch.
settings: {model: resnet18, image_size: 16}
params:
  freeze: {type: fixed, value: full}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  optimizer: {type: fixed, value: adam}
  batch_size: {type: fixed, value: 64}
  epochs: {type: fixed, value: 1}
"""


def run(folder: Path, workers: int, threads: str | None) -> list[float]:
    """Seconds per trial of `workers` workers started one by one; OMP_NUM_THREADS=threads if given."""
    url = f"sqlite:///{folder / 'study.db'}"
    space = folder / "space.yaml"
    space.write_text(SPACE)
    subprocess.run([sys.executable, "-m", "tuner", "create", "--study", "s", "--storage", url, "--space", str(space),
                    "--data", "digits", "--weights", "none", "--n-trials", str(workers), "--no-warm-start",
                    "--pruner", "none", "--artifacts", str(folder / "artifacts")],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TUNER_WORKERS_DIR"] = str(folder / "workers")
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    procs = []
    for _ in range(workers):
        procs.append(subprocess.Popen([sys.executable, "-m", "tuner", "worker", "--study", "s", "--storage", url,
                                       "--device", "cpu", "--quiet"], env=env, stdout=subprocess.DEVNULL))
        time.sleep(1)  # by hand: one after the other
    for proc in procs:
        if proc.wait(timeout=1800) != 0:
            raise SystemExit(f"a worker failed (exit code {proc.returncode})")
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    return [t.user_attrs["train_seconds"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cores = machine_cores()
    print(f"shared cores: {args.workers} workers started one by one, resnet18 16 px digits, full fine-tuning, "
          f"1 epoch per trial, on {machine()}")
    results = {}
    for label, threads in (("a thread per core", str(cores)), ("shared cores", None)):
        with tempfile.TemporaryDirectory() as folder:
            seconds = run(Path(folder), args.workers, threads)
        results[label] = statistics.median(seconds)
        print(f"  {label:18s}: seconds per trial {', '.join(f'{s:.1f}' for s in sorted(seconds))} "
              f"(median {results[label]:.1f})")
    ratio = results["a thread per core"] / results["shared cores"]
    print(f"RATIO shared cores: trial time with a thread per core / with shared cores = {ratio:.2f} "
          f"(target > 1)")


if __name__ == "__main__":
    main()
