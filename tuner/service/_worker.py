"""A worker: joins a study from its stored config and runs trials until the global budget is spent."""

from __future__ import annotations

import os
import socket
import time

import optuna
import torch
from optuna.trial import FrozenTrial

from tuner.config import StudyConfig
from tuner.progress import progress_for
from tuner.search import Objective, StudyControl
from tuner.service._artifact_store import open_artifact_store
from tuner.service._checkpoints import ArtifactCheckpointer
from tuner.service._handover import TrialHandover
from tuner.service._open import OpenedStudy
from tuner.service._other_workers import OtherWorkers
from tuner.service._prepare import ready_for_work
from tuner.service._promotion import Promoter
from tuner.service._reporting import Reporter
from tuner.service._summary import WorkerSummary
from tuner.service._signals import StopFlag
from tuner.service._storage import mask_url
from tuner.service._torch_threads import TorchThreads
from tuner.service._trial_end import TrialEnd
from tuner.service._trial_stops import EXPECTED_STOPS, HANDED_BACK_ATTR, HandBack, TakenOver, refuse_start
from tuner.service._worker_log import ExpectedStops, make_logger
from tuner.training import derive_seed, trial_settings


def worker_name(device: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


class Worker:
    """Runs trials of one study in this process, sharing the budget with every other worker.

    Here: joining the study (the constructor, build_objective), then the trial loop (run on).
    """

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
        self.started_at = time.monotonic()  # reset when run() starts: the wall time of the summary
        self.current: int | None = None  # number of the trial running here, until Optuna tells it
        # (the epoch being trained or finished now, epochs in all) of the current trial: what a
        # first Ctrl-C says it will finish before the hand-back.
        self.epoch = (1, 0)
        self.threads = TorchThreads(self.log)
        self.trial_end = TrialEnd(self.study, self.storage, self.store, self.checkpointer, self.control, self.handover,
                                  keep_paused=self.config.freeze_thaw)
        self.promoter = (Promoter(self.study, self.config.reduction_factor, self.log, self.config.rung_signal)
                         if self.config.freeze_thaw else None)
        self.others = OtherWorkers(self.study, self.control, self.handover, self.stop,
                                   self.storage_settings.heartbeat_interval)

    def build_objective(self) -> Objective:
        # Joined without preparing (`tuner worker`): checked for work here, once.
        opened = self.opened if self.opened.device is not None else ready_for_work(self.opened)
        return Objective(
            opened.space, opened.data, trial_settings(self.config, self.options), opened.device,
            checkpointer=self.checkpointer, on_epoch=self.on_epoch, keep_best=self.keep_best,
            progress=self.progress,
        )

    def run(self) -> WorkerSummary:
        self.started_at = time.monotonic()
        deadline = None if self.options.timeout is None else time.monotonic() + self.options.timeout
        if self.others.nothing_to_do():
            self.report.nothing_to_do()
            return self.summary()
        self.threads.join()
        try:
            if self.work(deadline):
                self.trial_end.tidy()
        finally:
            self.threads.leave()
        return self.summary()

    def work(self, deadline: float | None) -> bool:
        """Check the inputs, then run trials; False if the budget turned out to be taken."""
        # Data, device and model are checked before this worker writes anything (the stale
        # trials it would fail and requeue below are writes).
        self.objective = self.build_objective()
        self.handover.recover_stale()
        if self.control.left() <= 0 and not self.others.wait(deadline):
            self.report.budget_taken()
            return False
        self.report.joined(mask_url(self.storage_settings.url), self.objective.runtime.device)
        restore = self.stop.install()
        self.report.show_study()
        try:
            with ExpectedStops().installed(), self.progress.running():
                self.optimize(deadline)
        finally:
            restore()
        return True

    def optimize(self, deadline: float | None) -> None:
        """study.optimize until the budget is spent, the deadline passes or the worker is stopped."""
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                self.study.optimize(
                    self.run_trial, timeout=remaining, catch=EXPECTED_STOPS,
                    # A full collection costs 0.1-0.5 s with torch loaded. On a GPU it is worth
                    # it: a finished trial's tensors must be gone before the next model is
                    # built, and their cached blocks go back to other processes on that GPU
                    # (after_trial). On a CPU, reference counting frees them already.
                    callbacks=[self.after_trial], gc_after_trial=self.objective.runtime.is_cuda,
                )
            except Exception as error:
                if self.current is None or raised_by_objective(error) or not self.handover.taken_over(
                        self.current):
                    raise
                self.current = None
                if not self.stop.set:
                    continue  # back to work at once: the budget has room for the retry at least
            if self.stop.set or not self.others.wait(deadline):
                break

    def run_trial(self, trial: optuna.Trial) -> float:
        refuse_start(trial, self.study, self.control.n_trials, self.stop.set)
        self.trials_run += 1
        self.current = trial.number
        self.epoch = (trial.user_attrs.get("epoch", 0) + 1, trial.user_attrs.get("epochs", 0))
        self.threads.share()
        trial.set_user_attr("worker", self.name)
        self.report.started(trial)
        try:
            return self.objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError as error:
            raise mark_objective_error(TakenOver(f"trial {trial.number} was ended by another worker")) from error
        except Exception as error:
            mark_objective_error(error)
            raise

    def on_epoch(self, trial: optuna.Trial, epoch: int, epochs: int, metric: float) -> None:
        self.threads.share()  # a worker started during this trial takes its share from the next epoch
        # A signal from here on is seen below: the hand-back comes after this very epoch.
        self.epoch = (epoch, epochs)
        trial.set_user_attr("epoch", epoch)
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("epoch_at", time.time())  # what `tuner status` shows as the last sign of life
        trial.set_user_attr("last_metric", metric)
        self.report.epoch(trial.number, epoch, epochs, metric)
        self.stop.poll(self.control)
        if self.stop.set:
            trial.set_user_attr(HANDED_BACK_ATTR, True)
            raise HandBack(f"handed back after epoch {epoch}")
        self.epoch = (epoch + 1, epochs)

    def keep_best(self, trial: optuna.Trial, value: float, state_dict: dict, meta: dict) -> None:
        self.trial_end.keep_best(trial, value, state_dict, meta)

    def after_trial(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        self.current = None  # Optuna told its state: the trial ended in this worker's hands
        if self.trial_end.ended_early(study, frozen):
            return
        self.trial_end.settle(study, frozen)
        if self.objective.runtime.is_cuda:
            torch.cuda.empty_cache()
        self.report.finished(frozen)
        if self.progress.live:
            self.report.show_study()
        self.stop.poll(self.control)
        # Optuna creates the next trial as soon as this returns: with the budget spent, it
        # would be one more trial marked over budget (a FAIL in every dashboard).
        if self.stop.set or self.others.budget_spent():
            study.stop()
        elif self.promoter is not None:
            self.promoter.promote()  # queued now, so that Optuna pops it as this worker's next trial

    def announce_stop(self) -> None:
        """Said at the first Ctrl-C (or `tuner stop`), before the epoch ends: what happens next."""
        self.report.stopping(self.current, *self.epoch, self.stop.by_signal)

    def summary(self) -> WorkerSummary:
        return self.report.summary(self.storage_settings.url, self.trials_run, time.monotonic() - self.started_at,
                                   self.stop.set and self.stop.by_signal)


OBJECTIVE_ERROR_MARK = "tuner_raised_by_objective"


def mark_objective_error(error: BaseException) -> BaseException:
    """Mark `error` as the objective's own, rather than storage's after the trial was taken over.

    A mark on the error, not the error kept by the worker: its traceback holds the trial's
    frames, and with them the model, optimizer, gradients and loader processes, which must be
    freed as soon as Optuna is done with the error (a pruned or diverged trial's too)."""
    setattr(error, OBJECTIVE_ERROR_MARK, True)
    return error


def raised_by_objective(error: BaseException) -> bool:
    return getattr(error, OBJECTIVE_ERROR_MARK, False)


def sampler_seed_for_worker(config: StudyConfig) -> int:
    # Workers of one study must not draw the same random start-up trials: mix in the pid.
    return derive_seed(config.seed, socket.gethostname(), os.getpid())
