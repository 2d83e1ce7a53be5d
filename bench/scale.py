"""Load held: many worker processes on one PostgreSQL study whose trials take a few ms each.

The real worker loop (budget checks, heartbeats, the stale-trial check, the wait for the
others' last trials), with a 3 ms sleep instead of training, so the storage, not the model,
is under load. What must hold, checked after the run (exit code 1 if any fails):
- the budget finishes exactly: n_trials COMPLETE, nothing left RUNNING or WAITING;
- no trial ran twice: the trials the workers ran inside the budget add up to the budget;
- the connections open to the study's database (sampled from pg_stat_activity every 20 ms)
  stay within the bound: each worker's engine pool (pool_size 2 + max_overflow 2).
Prints the throughput and the connection figures for the README.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, next_from  # noqa: E402

from tuner.space._space import load_space  # noqa: E402
from tuner.service._storage import StorageSettings, engine_kwargs, open_storage  # noqa: E402
from tuner.config import MachineOptions, StudyConfig  # noqa: E402
from tuner.service._open import create_study, open_for_work  # noqa: E402

POSTGRES = os.environ.get("TUNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TRIAL_SECONDS = 0.003
# Per worker process: its storage engine's pool (tuner.service._storage.engine_kwargs), shared by the
# trial loop and the heartbeat thread.
_POOL = engine_kwargs("postgresql+psycopg://x/y", 10)
CONNECTIONS_PER_WORKER = _POOL["pool_size"] + _POOL["max_overflow"]


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def child(url: str, barrier, results) -> None:
    """One worker process: the real Worker, whose trials sleep a few ms instead of training."""
    import torch

    from tuner.training._loop import make_runtime
    from tuner.service._worker import Worker, sampler_seed_for_worker

    class FewMsObjective:
        runtime = make_runtime(torch.device("cpu"))

        def __call__(self, trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0.0, 1.0)
            time.sleep(TRIAL_SECONDS)
            return x

    class FewMsWorker(Worker):
        def build_objective(self):
            return FewMsObjective()

    quiet()
    worker = FewMsWorker(open_for_work(StorageSettings(url=url), "scale", MachineOptions(device="cpu", quiet=True),
                                       seed_of=sampler_seed_for_worker))
    barrier.wait()
    results.put(worker.run().trials_run)


class ConnectionSampler(threading.Thread):
    """Counts the connections open to one database, from the admin database (not counted)."""

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
        self.database, self.peak, self.samples = database, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as connection:
            while not self.done.is_set():
                count = connection.execute(sqlalchemy.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db"), {"db": self.database}).scalar()
                connection.commit()  # a fresh statistics snapshot next time
                self.peak, self.samples = max(self.peak, count), self.samples + 1
                self.done.wait(0.02)


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"tuner_scale_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def setup(url: str, n_trials: int) -> None:
    space = load_space("default")
    config = StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18",
                         n_trials=n_trials, warm_start=False, pruner="none", artifacts="")
    storage = open_storage(StorageSettings(url=url), heartbeat=False)
    create_study(storage, "scale", config, note="scale")
    storage.engine.dispose()  # no pooled connection may survive into the forked workers


def run(context, url: str, database: str, admin_url: str, workers: int, n_trials: int) -> dict:
    setup(url, n_trials)
    barrier, results = context.Barrier(workers + 1), context.Queue()
    procs = [context.Process(target=child, args=(url, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    sampler = ConnectionSampler(admin_url, database)
    sampler.start()
    barrier.wait(timeout=600)  # every worker has joined the study: time the trials only
    start = time.perf_counter()
    ran = [next_from(results, procs, "scale") for _ in procs]
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=120)
    sampler.done.set()
    sampler.join()
    trials = optuna.load_study(study_name="scale", storage=url).get_trials(deepcopy=False)
    states = {state: sum(1 for t in trials if t.state == state) for state in optuna.trial.TrialState}
    return {"elapsed": elapsed, "ran": ran, "states": states, "peak": sampler.peak, "samples": sampler.samples,
            "over_budget": sum(1 for t in trials if t.user_attrs.get("over_budget")),
            "exit_codes": [proc.exitcode for proc in procs]}


def checks(result: dict, workers: int, n_trials: int) -> list[tuple[str, bool]]:
    states = result["states"]
    TrialState = optuna.trial.TrialState
    bound = workers * CONNECTIONS_PER_WORKER
    return [
        (f"budget finished exactly: {states[TrialState.COMPLETE]} COMPLETE of {n_trials}",
         states[TrialState.COMPLETE] == n_trials),
        (f"nothing left RUNNING ({states[TrialState.RUNNING]}) or WAITING ({states[TrialState.WAITING]})",
         states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0),
        (f"no trial ran twice: the workers ran {sum(result['ran'])} trials inside the budget",
         sum(result["ran"]) == n_trials),
        (f"FAIL trials are all over-budget starts: {states[TrialState.FAIL]} FAIL, "
         f"{result['over_budget']} over budget", states[TrialState.FAIL] == result["over_budget"]),
        (f"open connections peaked at {result['peak']} ({result['peak'] / workers:.2f} per worker), "
         f"bound {bound} ({CONNECTIONS_PER_WORKER} per worker)", 0 < result["peak"] <= bound),
        (f"every worker exited cleanly: {result['exit_codes']}", all(code == 0 for code in result["exit_codes"])),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--postgres", default=POSTGRES, help="a database URL of the server (new databases are made there)")
    args = parser.parse_args()
    quiet()
    print(f"scale: {args.workers} worker processes, {args.trials} trials of {TRIAL_SECONDS * 1000:.0f} ms "
          f"on PostgreSQL, on {machine()}")
    # Workers fork from a server that imported tuner's worker (torch, Optuna, SQLAlchemy) once:
    # sixteen interpreters importing torch on two cores would take minutes before the first trial.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tuner.service._worker"])
    database, url = fresh_database(args.postgres)
    try:
        result = run(context, url, database, args.postgres, args.workers, args.trials)
    finally:
        drop_database(args.postgres, database)
    print(f"  {args.trials} trials in {result['elapsed']:.1f} s: {args.trials / result['elapsed']:.0f} trials/s; "
          f"trials per worker {sorted(result['ran'])}; {result['samples']} connection samples")
    failed = 0
    for text, held in checks(result, args.workers, args.trials):
        print(f"  {'PASS' if held else 'FAIL'} {text}")
        failed += not held
    print(f"SCALE {'HELD' if not failed else 'NOT HELD'}: {args.workers} workers, {args.trials} trials")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
