"""A worker: joins a study from its stored config and runs trials until the global budget is spent."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.service._artifact_store import open_artifact_store
from tuner.service._checkpoints import (
    BEST_WEIGHTS_ATTR,
    ArtifactCheckpointer,
    prune_weights,
    upload_weights,
)
from tuner.service._cores import CoreShare
from tuner.config import StudyConfig
from tuner.training._models import ModelSpec
from tuner.training._settings import trial_settings
from tuner.search._objective import Objective, derive_seed
from tuner.progress import progress_for
from tuner.service._open import OpenedStudy
from tuner.service._prepare import load_checked_data
from tuner.service._storage import RETRY_OF_ATTR, duplicate_retry, mask_url
from tuner.search._budget import StudyControl
from tuner.search._study import finished_count, within_budget
from tuner.service._study_artifacts import publish_best_model
from tuner.text import plural
from tuner.training._loop import resolve_device

HANDED_BACK_ATTR = "handed_back"
OVER_BUDGET_ATTR = "over_budget"


class OverBudget(Exception):
    """The trial started after the study's budget was already taken by other trials."""


class HandBack(Exception):
    """The worker is stopping: the trial was checkpointed and goes back to the queue."""


class TakenOver(Exception):
    """Another worker ended this worker's running trial as dead and queued its retry."""


class DuplicateRetry(Exception):
    """The trial is a second retry of one failed trial (two workers queued it): dropped."""


@dataclass(frozen=True)
class WorkerSummary:
    trials_run: int
    finished: int
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    stopped_by_signal: bool


class StopFlag:
    """Set by the first SIGINT/SIGTERM or by `tuner stop`; a second signal exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.by_signal = False
        # Says at once what the stop will do (the worker sets it: it knows the trial and epoch).
        self.announce: Callable[[], None] = lambda: None

    def install(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self.handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() and self.by_signal:
            # Second signal: leave now. The running trial goes stale and is retried from
            # its last checkpoint after the grace period.
            os._exit(128 + signum)
        self.by_signal = True
        self.event.set()
        self.announce()

    def request(self) -> None:
        """`tuner stop`: stop like a first signal, but as asked (the worker exits 0)."""
        if not self.event.is_set():
            self.event.set()
            self.announce()

    @property
    def set(self) -> bool:
        return self.event.is_set()


def worker_name(device: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes each record to sys.stderr as it is at that moment.

    A plain StreamHandler keeps the stream it was created with. The logger lives as long as
    the process, so a second in-process run (click's CliRunner, a notebook) whose stderr was
    replaced wrote into the first run's long-gone stream instead of its own.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler.__init__ would store a fixed stream

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def make_logger(name: str, quiet: bool) -> logging.LoggerAdapter:
    logger = logging.getLogger(f"tuner.worker.{os.getpid()}")
    if not logger.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(worker)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return logging.LoggerAdapter(logger, {"worker": name})


class ExpectedStops(logging.Filter):
    """Drops Optuna's failure warnings for the trials a worker ends on purpose.

    Optuna logs every trial that ends in a caught exception as a failure, with a traceback,
    then logs its value. A trial started after the budget was taken, or handed back when the
    worker stops, is expected (the worker logs its own line for a hand-back): a traceback there
    reads as a crash, and racing workers printed one at the end of every shared study.
    """

    def __init__(self, expected: tuple[type[BaseException], ...] | None = None) -> None:
        super().__init__()
        # The worker's own stops by default; a caller with stops of its own (a benchmark
        # that cuts trials at its budget) names them.
        self.expected = expected or (OverBudget, HandBack, TakenOver, DuplicateRetry)
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.match(r"Trial (\d+) failed", record.getMessage())
        if found is None:
            return True
        number = int(found.group(1))
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.expected):
            self.numbers.add(number)  # its value line follows: drop that one too
            return False
        if record.getMessage() == f"Trial {number} failed with value None." and number in self.numbers:
            self.numbers.discard(number)
            return False
        return True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # The logger of Optuna's optimize loop; a logger's filters see only its own records.
        logger = logging.getLogger("optuna.study._optimize")
        logger.addFilter(self)
        try:
            yield
        finally:
            logger.removeFilter(self)


class Worker:
    """Runs trials of one study in this process, sharing the budget with every other worker.

    Its jobs, each in its own part below: joining the study (the constructor and
    build_objective), running trials within the budget (run, optimize, run_trial,
    after_trial, await_others), handing trials back and taking over dead workers' trials
    (TrialHandover), and reporting (Reporter).
    """

    # --- joining the study -----------------------------------------------------------

    def __init__(self, opened: OpenedStudy) -> None:
        """`opened`: the study as this process opened it for work (tuner.service._open), its
        sampler seeded by the study seed for a lone `tuner run`, else per worker (see
        sampler_seed_for_worker) so that workers explore differently."""
        self.opened = opened
        self.options = opened.machine
        self.study_name = opened.name
        self.stop = StopFlag()
        self.stop.announce = self.announce_stop
        self.storage_settings = opened.settings  # the URL and the study's own heartbeat settings
        self.storage = opened.storage
        self.study, self.config = opened.study, opened.config
        self.control = StudyControl(self.study, self.storage, self.config.n_trials, opened.attrs)
        self.store = open_artifact_store(self.options.artifacts or self.config.artifacts)
        self.checkpointer = ArtifactCheckpointer(self.store, self.study_name)
        self.name = worker_name(self.options.device)
        self.log = make_logger(self.name, self.options.quiet)
        # A live display on a terminal; plain log lines (as before) in a pipe or with --quiet.
        self.progress = progress_for(self.options.quiet)
        self.handover = TrialHandover(self.study, self.log, self.storage_settings.grace_period)
        self.report = Reporter(self.study, self.control, self.log, self.config.metric, self.progress, self.study_name)
        self.objective: Objective | None = None
        self.trials_run = 0
        self.current: int | None = None  # number of the trial running here, until Optuna tells it
        # (the epoch being trained or finished now, epochs in all) of the current trial: what a
        # first Ctrl-C says it will finish before the hand-back.
        self.epoch = (1, 0)
        self.objective_error: BaseException | None = None  # what the objective itself raised last
        # An OMP_NUM_THREADS of the user's (or of --processes) wins over counting the workers.
        self.cores = None if "OMP_NUM_THREADS" in os.environ else CoreShare()
        self.max_threads = torch.get_num_threads()
        self.shared_threads: int | None = None  # the share last logged

    def build_objective(self) -> Objective:
        opened = self.opened
        data = opened.data
        if data is None:
            # Joined without preparing (`tuner worker`): the device first, so a bad one fails
            # before seconds of decoding. The study stores the model's name only: a worker
            # whose machine cannot import it (a MODULE:FUNCTION that is not here, timm not
            # installed) stops before any trial.
            resolve_device(self.options.device)
            ModelSpec(self.config.model, weights=self.config.weights)
            data = load_checked_data(opened)
        return Objective(
            opened.space, data, trial_settings(self.config, self.options), checkpointer=self.checkpointer,
            on_epoch=self.on_epoch, keep_best=self.keep_best, progress=self.progress,
        )

    # --- running trials within the budget --------------------------------------------

    def run(self) -> WorkerSummary:
        deadline = None if self.options.timeout is None else time.monotonic() + self.options.timeout
        if self.nothing_to_do():
            self.log.info("budget of %s already taken; nothing to do (raise it with tuner extend "
                          "--study %s --n-trials N)", plural(self.control.n_trials, "trial"), self.study_name)
            return self.summary()
        if self.cores is not None and not self.cores.join():  # before the data loads: a worker
            self.cores = None  # starting meanwhile counts this one (join warned why it could not)
        try:
            if self.work(deadline):
                self.tidy()
        finally:
            if self.cores is not None:
                self.cores.leave()
                # The count is process-wide: a long-lived process (CliRunner in pytest, a
                # notebook) must not keep this worker's share after it has gone.
                torch.set_num_threads(self.max_threads)
        return self.summary()

    def work(self, deadline: float | None) -> bool:
        """Check the inputs, then run trials; False if the budget turned out to be taken."""
        # Data, device and model are checked before this worker writes anything (the stale
        # trials it would fail and requeue below are writes).
        self.objective = self.build_objective()
        self.recover_stale()
        if self.control.left() <= 0 and not self.await_others(deadline):
            self.log.info("budget of %d trials already taken; nothing to do", self.control.n_trials)
            return False
        self.log.info(
            "joined study %s on %s (%s, budget %s)", self.study_name,
            mask_url(self.storage_settings.url), self.objective.runtime.device, plural(self.control.n_trials, "trial"),
        )
        restore = self.stop.install()
        self.report.show_study()
        try:
            with ExpectedStops().installed(), self.progress.running():
                self.optimize(deadline)
        finally:
            restore()
        return True

    def tidy(self) -> None:
        """Once the study is over (every slot finished, nothing running or queued), remove
        what nothing can resume from: checkpoints of dead lineages, superseded weights."""
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return
        if self.control.left() > 0:
            return  # a stale trial just failed frees a slot: its retry may be on its way
        self.checkpointer.sweep(trials)
        try:
            best = self.study.best_trial.number
        except ValueError:
            return  # no completed trial: no weights were uploaded
        prune_weights(self.store, trials, best)

    def nothing_to_do(self) -> bool:
        """The budget is taken by finished trials and none runs or waits: no data to load."""
        if self.control.left() > 0:
            return False
        return not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))

    def optimize(self, deadline: float | None) -> None:
        """study.optimize until the budget is spent, the deadline passes or the worker is stopped."""
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                self.study.optimize(
                    self.run_trial, timeout=remaining, catch=(OverBudget, HandBack, TakenOver, DuplicateRetry),
                    # A full collection costs 0.1-0.5 s with torch loaded. On a GPU it is worth
                    # it: a finished trial's tensors must be gone before the next model is
                    # built, and their cached blocks go back to other processes on that GPU
                    # (after_trial). On a CPU, reference counting frees them already.
                    callbacks=[self.after_trial], gc_after_trial=self.objective.runtime.is_cuda,
                )
            except Exception as error:
                if self.current is None or error is self.objective_error or not self.handover.taken_over(
                        self.current):
                    raise
                self.current = None
                if not self.stop.set:
                    continue  # back to work at once: the budget has room for the retry at least
            if self.stop.set or not self.await_others(deadline):
                break

    def run_trial(self, trial: optuna.Trial) -> float:
        if self.stop.set:
            # A queued retry or warm-start trial was just taken: give it back, not lose it.
            trial.set_user_attr(HANDED_BACK_ATTR, True)
            raise HandBack("stopping before the trial started")
        earlier = duplicate_retry(self.study, trial)
        if earlier is not None:
            # Ended before any training, never counted, like a trial over the budget.
            trial.set_user_attr("duplicate_of", earlier)
            raise DuplicateRetry(f"trial {trial.number} repeats the retry of trial {earlier}")
        if not within_budget(self.study, trial, self.control.n_trials):
            # Ended before any training, never counted: FAIL with a marker, then stop.
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            self.study.stop()
            raise OverBudget(f"trial {trial.number} started after the budget was taken")
        self.trials_run += 1
        self.current, self.objective_error = trial.number, None
        self.epoch = (trial.user_attrs.get("epoch", 0) + 1, trial.user_attrs.get("epochs", 0))
        self.share_cores()
        trial.set_user_attr("worker", self.name)
        self.report.started(trial)
        try:
            return self.objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError as error:
            self.objective_error = TakenOver(f"trial {trial.number} was ended by another worker")
            raise self.objective_error from error
        except Exception as error:
            self.objective_error = error
            raise

    def share_cores(self) -> None:
        """Share this machine's cores among its live workers, at each trial and epoch (a few
        microseconds: a directory listing)."""
        if self.cores is None:
            return
        workers = self.cores.workers()
        threads = max(1, min(self.max_threads, self.cores.cores // workers))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if threads != self.shared_threads:  # logged once at the first trial, then on each change
            self.shared_threads = threads
            self.log.info("%d torch thread(s): %d cores shared by %d tuner workers on this machine "
                          "(set OMP_NUM_THREADS to choose)", threads, self.cores.cores, workers)

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        self.share_cores()  # a worker started during this trial takes its share from the next epoch
        # A signal from here on is seen below: the hand-back comes after this very epoch.
        self.epoch = (epoch, epochs)
        trial.set_user_attr("epoch", epoch)
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("epoch_at", time.time())  # what `tuner status` shows as the last sign of life
        trial.set_user_attr("last_metric", metric)
        self.log.info("trial %d epoch %d/%d %s=%.4f", trial.number, epoch, epochs, self.config.metric, metric)
        self.progress.show("metric", f"last epoch: trial {trial.number} epoch {epoch}/{epochs} "
                                     f"{self.config.metric}={metric:.4f}")
        self.poll()
        if self.stop.set:
            trial.set_user_attr(HANDED_BACK_ATTR, True)
            raise HandBack(f"handed back after epoch {epoch}")
        self.epoch = (epoch + 1, epochs)

    def poll(self) -> None:
        """Read the budget and the stop request: `tuner extend` and `tuner stop` act through them."""
        self.control.refresh()
        if self.control.stop_requested:
            self.stop.request()

    def keep_best(self, trial: optuna.Trial, value: float, state_dict: dict, meta: dict) -> None:
        """Upload the weights when this trial beats every finished trial so far."""
        try:
            best = self.study.best_value
        except ValueError:
            best = None
        better = best is None or value > best  # every study maximizes its metric
        if better:
            artifact_id = upload_weights(self.store, trial, state_dict, meta)
            trial.set_user_attr(BEST_WEIGHTS_ATTR, artifact_id)

    def after_trial(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        self.current = None  # Optuna told its state: the trial ended in this worker's hands
        if frozen.user_attrs.get(HANDED_BACK_ATTR):
            self.handover.requeue(frozen)
            study.stop()
            return
        if frozen.user_attrs.get(OVER_BUDGET_ATTR):
            return
        if "duplicate_of" in frozen.user_attrs:
            if self.control.looks_spent():
                study.stop()  # else the next trial would start only to find itself over budget
            return
        if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED) or self.lineage_ended(frozen):
            self.checkpointer.finish(frozen)
        if frozen.state == TrialState.COMPLETE and BEST_WEIGHTS_ATTR in frozen.user_attrs:
            prune_weights(self.store, study.get_trials(deepcopy=False), study.best_trial.number)
        self.publish_best(study, frozen)
        if self.objective.runtime.is_cuda:
            torch.cuda.empty_cache()
        self.report.finished(frozen)
        if self.progress.live:
            self.report.show_study()
        self.poll()
        if self.stop.set:
            study.stop()
            return
        # Optuna creates the next trial as soon as this returns: with the budget spent, it
        # would be one more trial marked over budget (a FAIL in every dashboard). A count
        # query answers it; only when the budget looks spent is it worth reading the study
        # to ask whether a RUNNING trial is really a dead worker's.
        if self.control.looks_spent():
            self.recover_stale()
            if self.control.looks_spent():
                study.stop()

    def publish_best(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        """The study-level "best model" artifact, which optuna-dashboard shows under Study Artifacts."""
        # Once the trial is told: only then is "the best trial" settled for it.
        if frozen.state != TrialState.COMPLETE or BEST_WEIGHTS_ATTR not in frozen.user_attrs:
            return
        if study.best_trial.number == frozen.number:
            publish_best_model(study, self.storage, frozen.number, frozen.user_attrs[BEST_WEIGHTS_ATTR])

    def lineage_ended(self, frozen: FrozenTrial) -> bool:
        """Whether a FAIL ended its lineage: the objective raised, and Optuna retries only
        dead workers' trials. Unless another worker failed it as stale and queued the retry
        that resumes from this very checkpoint (a frozen worker's trial)."""
        if frozen.state != TrialState.FAIL:
            return False
        origin = frozen.user_attrs.get("lineage", frozen.number)
        return not any(t.user_attrs.get("lineage") == origin and t.number != frozen.number
                       for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))

    def await_others(self, deadline: float | None) -> bool:
        """With the budget taken, stay while other workers' trials run: True if one of them
        died and its retry is queued for this worker to take (or `tuner extend` raised the
        budget), False once all have finished.

        Without this, the last worker could leave while a dead worker's trial is still
        within its grace period, and that trial would wait for a worker that never comes.
        """
        pause = 0.02
        while deadline is None or time.monotonic() < deadline:
            self.poll()
            if self.stop.set:
                return False
            self.recover_stale()
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if waiting or self.control.left() > 0:
                return True
            if not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return False
            self.stop.event.wait(pause)
            # Back off to one poll every 5 s at most: the others' last trials often end within
            # moments of this one (a fixed 5 s kept the whole study waiting that long), yet a
            # requeued trial should not wait a whole heartbeat either.
            pause = min(pause * 2, self.storage_settings.heartbeat_interval, 5)
        return False

    def recover_stale(self) -> None:
        self.handover.recover_stale()

    def announce_stop(self) -> None:
        """Said at the first Ctrl-C (or `tuner stop`), before the epoch ends: what happens next."""
        again = "; Ctrl-C again to quit now" if self.stop.by_signal else ""
        if self.current is None:
            self.log.warning("stopping: no trial is running here%s", again)
            return
        running, total = self.epoch
        epoch = f"epoch {running} of {total}" if total else "the current epoch"
        self.log.warning("finishing %s of trial %d, then handing it back%s", epoch, self.current, again)

    def summary(self) -> WorkerSummary:
        return self.report.summary(self.trials_run, self.stop.set and self.stop.by_signal)


class TrialHandover:
    """Hand-back and takeover: trials that move between workers of a study."""

    def __init__(self, study: optuna.Study, log: logging.LoggerAdapter, grace_period: int) -> None:
        self.study = study
        self.log = log
        self.grace_period = grace_period

    def taken_over(self, number: int) -> bool:
        """Whether another worker ended this worker's trial `number` as dead.

        A worker that went without a heartbeat for the grace period (frozen by the OS, a
        swap storm, a database outage longer than the grace period) finds on waking that
        another worker failed its trial and queued the retry. Its next write to the trial
        raises, and Optuna's own tell of the finished trial then raises out of optimize:
        that used to end the worker with a traceback. The retry resumes from the last
        checkpoint, so this worker only drops the trial and goes on. An error the objective
        raised itself (a bug) is never taken for this (the caller checks).
        """
        failed = self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if not any(t.number == number for t in failed):
            return False
        self.log.warning(
            "trial %d was ended by another worker: no heartbeat from this one for %d s; its retry "
            "resumes from the last checkpoint, and this worker goes on", number, self.grace_period)
        return True

    def recover_stale(self) -> None:
        """Fail (and queue the retry of) trials whose worker died, before counting the budget.

        budget_left() counts RUNNING trials as taken, and Optuna only looks for stale
        trials when a trial starts. Without this, a dead worker's trial kept its slot
        forever: a new worker found the budget "already taken" and exited, and the last
        live worker stopped without ever retrying it.
        """
        optuna.storages.fail_stale_trials(self.study)

    def requeue(self, frozen: FrozenTrial) -> None:
        """Put a handed-back trial straight back in the queue (no grace period to wait out)."""
        attrs = {k: v for k, v in frozen.user_attrs.items() if k != HANDED_BACK_ATTR}
        attrs[RETRY_OF_ATTR] = frozen.number  # see duplicate_retry()
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=attrs, system_attrs=frozen.system_attrs,  # keeps Optuna's retry history
        ))
        self.log.warning("trial %d handed back at epoch %s; another worker resumes it",
                         frozen.number, frozen.user_attrs.get("epoch"))


class Reporter:
    """The worker's log lines about trials, and its final summary."""

    def __init__(self, study: optuna.Study, control: StudyControl, log: logging.LoggerAdapter,
                 metric: str, progress: Any, study_name: str) -> None:
        self.study = study
        self.control = control
        self.log = log
        self.metric = metric
        self.progress = progress
        self.study_name = study_name

    def started(self, trial: optuna.Trial) -> None:
        origin = trial.user_attrs.get("lineage")
        if origin is not None and origin != trial.number:
            done = trial.user_attrs.get("epoch", 0)
            self.log.info("trial %d resumes trial %d from epoch %d", trial.number, origin, done + 1)
        else:
            self.log.info("trial %d started", trial.number)

    def finished(self, frozen: FrozenTrial) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        reason = frozen.user_attrs.get("stop_reason", frozen.state.name.lower())
        value = frozen.value if frozen.value is not None else frozen.user_attrs.get("last_metric")
        shown = "-" if value is None else f"{value:.4f}"
        self.log.info("trial %d %s (%s) value=%s; %d/%d finished; best %s", frozen.number,
                      frozen.state.name, reason, shown, finished_count(self.study), self.control.n_trials,
                      self.best_text())

    def show_study(self) -> None:
        done = f"{finished_count(self.study)}/{plural(self.control.n_trials, 'trial')}"
        self.progress.show("study", f"study {self.study_name}: {done} finished; best {self.metric} "
                                    f"{self.best_text()}")

    def best_text(self) -> str:
        try:
            best = self.study.best_trial
        except ValueError:
            return "none yet"
        return f"{best.value:.4f} (trial {best.number})"

    def summary(self, trials_run: int, stopped_by_signal: bool) -> WorkerSummary:
        try:
            best = self.study.best_trial
            value, params, number = best.value, dict(best.params), best.number
            params.update(best.user_attrs.get("fixed_params", {}))
        except ValueError:
            value, params, number = None, {}, None
        return WorkerSummary(
            trials_run=trials_run, finished=finished_count(self.study), n_trials=self.control.n_trials,
            best_value=value, best_params=params, best_number=number, stopped_by_signal=stopped_by_signal,
        )


def sampler_seed_for_worker(config: StudyConfig) -> int:
    # Workers of one study must not draw the same random start-up trials: mix in the pid.
    return derive_seed(config.seed, socket.gethostname(), os.getpid())
