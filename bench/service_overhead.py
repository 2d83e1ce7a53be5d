"""(d) Service overhead: trial throughput of a no-op objective through tuner's worker path vs bare Optuna.

tuner's path includes everything a worker does around a trial: the global-budget check,
heartbeats, user attrs, the stale-trial check and the after-trial callback. Bare Optuna
runs `study.optimize` on the same kind of storage, with the same sampler and a MaxTrialsCallback. SQLite and PostgreSQL,
1 and 4 worker processes. Prints trials/s and the ratio tuner/bare (target >= 0.9).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tuner.space import load_space  # noqa: E402
from tuner.storage import StorageSettings, open_storage  # noqa: E402
from tuner.study import StudyConfig, create_study, make_sampler  # noqa: E402
from tuner.training import make_runtime  # noqa: E402
from tuner.worker import Worker, WorkerOptions  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def noop(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


class NoopObjective:
    """Stands in for tuner's Objective: same call, no training."""

    def __init__(self) -> None:
        self.runtime = make_runtime(torch.device("cpu"))

    def __call__(self, trial: optuna.Trial) -> float:
        return noop(trial)


class NoopWorker(Worker):
    """The real worker loop, with a no-op objective instead of a training run."""

    def build_objective(self):
        return NoopObjective()


def bare_child(url: str, n_trials: int, barrier) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The sampler tuner's study uses (TPE, multivariate, grouped, constant liar): this
    # benchmark weighs the worker path around a trial, not the choice of sampler.
    study = optuna.load_study(study_name="bench", storage=url, sampler=make_sampler(bench_config(n_trials, ""), 0))
    callback = optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,))
    barrier.wait()  # time the trials, not the interpreter's start-up
    study.optimize(noop, callbacks=[callback])


def tuner_child(url: str, n_trials: int, barrier) -> None:
    import logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = NoopWorker(StorageSettings(url=url), "bench", WorkerOptions(device="cpu", quiet=True))
    barrier.wait()
    worker.run()
    logging.shutdown()


def bench_config(n_trials: int, artifacts: str) -> StudyConfig:
    space = load_space("default")
    return StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18",
                       n_trials=n_trials, warm_start=False, artifacts=artifacts, pruner="none")


def setup(url: str, n_trials: int, tuner: bool, artifacts: str) -> None:
    if tuner:
        config = bench_config(n_trials, artifacts)
        create_study(open_storage(StorageSettings(url=url), heartbeat=False), "bench", config, note="bench")
    else:
        optuna.create_study(study_name="bench", storage=url, direction="maximize")


def throughput(url: str, n_trials: int, workers: int, tuner: bool, artifacts: str) -> float:
    setup(url, n_trials, tuner, artifacts)
    target = tuner_child if tuner else bare_child
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    procs = [context.Process(target=target, args=(url, n_trials, barrier)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - start
    done = len(optuna.load_study(study_name="bench", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)))
    return done / elapsed


def fresh_url(backend: str, folder: str) -> tuple[str, callable]:
    if backend == "sqlite":
        return f"sqlite:///{folder}/{uuid.uuid4().hex}.db", lambda: None
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    return POSTGRES.rsplit("/", 1)[0] + f"/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"(d) service overhead, {args.trials} no-op trials per run, on {machine()}")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends.split(","):
            for workers in (1, 4):
                rates = {}
                for tuner in (False, True):
                    url, drop = fresh_url(backend, folder)
                    try:
                        rates[tuner] = throughput(url, args.trials, workers, tuner, folder)
                    finally:
                        drop()
                ratio = rates[True] / rates[False]
                ratios.append(ratio)
                print(f"  {backend:10s} {workers} worker(s): bare Optuna {rates[False]:.1f} trials/s, "
                      f"tuner {rates[True]:.1f} trials/s -> ratio {ratio:.2f}")
    worst = min(ratios)
    print(f"RATIO (d) tuner/bare trial throughput, worst case = {worst:.2f}; target >= 0.9 -> "
          f"{'MET' if worst >= 0.9 else 'NOT MET'}")


if __name__ == "__main__":
    main()
