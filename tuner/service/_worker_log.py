"""A worker's log: its stderr logger, and the filter that keeps Optuna quiet about the trials it ends on purpose."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Iterator

from tuner.service._trial_stops import EXPECTED_STOPS


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
        self.expected = expected or EXPECTED_STOPS
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
