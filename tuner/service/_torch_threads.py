"""This worker's torch threads: its share of the machine's cores, shared with the other tuner workers there."""

from __future__ import annotations

import logging
import os

import torch

from tuner.service._cores import CoreShare


class TorchThreads:
    """Sets torch's thread count to this worker's share of the cores, at each trial and epoch."""

    def __init__(self, log: logging.LoggerAdapter) -> None:
        self.log = log
        # An OMP_NUM_THREADS of the user's (or of --processes) wins over counting the workers.
        self.cores = None if "OMP_NUM_THREADS" in os.environ else CoreShare()
        self.max_threads = torch.get_num_threads()
        self.shared_threads: int | None = None  # the share last logged

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
        if threads != self.shared_threads:  # logged once at the first trial, then on each change
            self.shared_threads = threads
            self.log.info("%d torch thread(s): %d cores shared by %d tuner workers on this machine "
                          "(set OMP_NUM_THREADS to choose)", threads, self.cores.cores, workers)
