"""Progress of training, feature extraction and evaluation: silent, or a live rich display on a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator, Mapping

Advance = Callable[[int], None]

# Set in the children of `tuner worker --processes/--gpus`: several live displays on one
# terminal would overwrite each other, so the children print plain lines instead.
PLAIN_ENV = "TUNER_PLAIN_PROGRESS"


def _ignore(count: int) -> None:
    pass


class Progress:
    """The silent default: callers print one plain line per event themselves (a pipe, a log file)."""

    live = False

    @contextlib.contextmanager
    def steps(self, description: str, total: int) -> Iterator[Advance]:
        """A bar over `total` images; the caller advances it by each batch's size."""
        yield _ignore

    def show(self, slot: str, text: str) -> None:
        """Set one status line above the bar (slot: "study", "trial" or "metric")."""

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        yield


def short_params(params: Mapping[str, Any]) -> str:
    """A trial's parameters in one short line: `freeze=head lr=1.2e-03 batch_size=64`."""
    parts = []
    for name, value in sorted(params.items()):
        if isinstance(value, float):
            text = f"{value:.2e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"
        else:
            text = str(value)
        parts.append(f"{name}={text}")
    return " ".join(parts)


class LiveProgress(Progress):
    """Status lines and an epoch bar (images/s, ETA) redrawn in place on a terminal's stderr.

    Log lines written to sys.stderr while it runs are printed above the display (rich
    redirects the stream), so the worker's own log handler needs no change.
    """

    live = True
    SLOTS = ("study", "trial", "metric")

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn, TimeRemainingColumn

        self.console = Console(file=sys.__stderr__ if sys.stderr is None else sys.stderr)
        self.bars = Bars(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console,
        )
        self.lines: dict[str, str] = {}
        self.live_display = None

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        shown = [Text(self.lines[slot]) for slot in self.SLOTS if self.lines.get(slot)]
        return Group(*shown, self.bars)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        from rich.live import Live

        with Live(self, console=self.console, refresh_per_second=8, redirect_stdout=False,
                  redirect_stderr=True, transient=False) as live:
            self.live_display = live
            try:
                yield
            finally:
                self.live_display = None

    def show(self, slot: str, text: str) -> None:
        self.lines[slot] = text

    @contextlib.contextmanager
    def steps(self, description: str, total: int) -> Iterator[Advance]:
        task = self.bars.add_task(description, total=total, rate="")

        def advance(count: int) -> None:
            self.bars.advance(task, count)
            speed = self.bars.tasks[self.bars.task_ids.index(task)].speed
            if speed:
                self.bars.update(task, rate=f"{speed:,.0f} img/s")

        try:
            yield advance
        finally:
            self.bars.remove_task(task)


def progress_for(quiet: bool, stream=None) -> Progress:
    """A live display when stderr is a terminal (and not quiet, nor a supervised child), else silent."""
    stream = sys.stderr if stream is None else stream
    if quiet or os.environ.get(PLAIN_ENV) or not getattr(stream, "isatty", lambda: False)():
        return Progress()
    if os.environ.get("TERM") == "dumb":
        return Progress()
    return LiveProgress()
