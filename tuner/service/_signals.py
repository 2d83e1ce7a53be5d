"""How a worker is asked to stop: the first SIGINT/SIGTERM or `tuner stop` stops it after the epoch."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

from tuner.search import StudyControl


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

    def poll(self, control: StudyControl) -> None:
        """Read the budget and the stop request: `tuner extend` and `tuner stop` act through them."""
        control.refresh()
        if control.stop_requested:
            self.request()

    @property
    def set(self) -> bool:
        return self.event.is_set()
