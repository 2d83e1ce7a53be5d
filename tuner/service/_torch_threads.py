"""This worker's torch threads: its share of the machine's cores, shared with the other tuner workers there."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch

from tuner.service._cores import CoreShare

# At most one "N torch thread(s)" line a minute: another tuner process coming and going
# printed it four times in 30 s.
LOG_EVERY_S = 60.0


class TorchThreads:
    """Sets torch's thread count to this worker's share of the cores, at each trial and epoch."""

    def __init__(self, log: logging.LoggerAdapter, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        # An OMP_NUM_THREADS of the user's (or of --processes) wins over counting the workers.
        self.cores = None if "OMP_NUM_THREADS" in os.environ else CoreShare()
        self.max_threads = torch.get_num_threads()
        self.shared_threads: int | None = None  # the share last logged
        self.logged_at: float | None = None

    def join(self) -> None:
        """Count this worker in among the machine's workers (before the data loads: a worker
        starting meanwhile counts this one)."""
        if self.cores is not None and not self.cores.join():
            self.cores = None  # join warned why it could not

    def leave(self) -> None:
        if self.cores is not None:
            self.cores.leave()
            # The count is process-wide: a long-lived process (CliRunner in pytest, a
            # notebook) must not keep this worker's share after it has gone.
            torch.set_num_threads(self.max_threads)

    def share(self) -> None:
        """Share this machine's cores among its live workers, at each trial and epoch (a few
        microseconds: a directory listing)."""
        if self.cores is None:
            return
        workers = self.cores.workers()
        threads = max(1, min(self.max_threads, self.cores.cores // workers))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.tell(threads, workers)

    def tell(self, threads: int, workers: int) -> None:
        """Log the share when it differs from the one last logged, at most once a minute: a change
        within the minute is logged at the first trial or epoch after it (if it still holds)."""
        now = self.clock()
        if threads == self.shared_threads or (self.logged_at is not None and now - self.logged_at < LOG_EVERY_S):
            return
        self.shared_threads, self.logged_at = threads, now
        self.log.info("%d torch thread(s): %d cores shared by %d tuner workers on this machine "
                      "(set OMP_NUM_THREADS to choose)", threads, self.cores.cores, workers)
