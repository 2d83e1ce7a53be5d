"""Progress: a live rich display when stderr is a terminal (a real pseudo-terminal here), plain lines
otherwise, nothing extra with --quiet; the short parameter form."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tuner.progress import LiveProgress, Progress, progress_for, short_params

LAST_BLOCK_SPACE = """\
description: One epoch of the last block, so that the epoch bar has batches to show.
settings: {model: resnet18, image_size: 16}
params:
  freeze: {type: fixed, value: last_blocks}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: {type: fixed, value: 4}
  epochs: {type: fixed, value: 1}
  patience: {type: fixed, value: 5}
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run `args` with stdin/stdout/stderr on a fresh pseudo-terminal (120 columns); all it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(Path(__file__).parents[1]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    env.pop("TUNER_PLAIN_PROGRESS", None)
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=30)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def test_run_on_a_terminal_shows_the_study_with_its_eta_the_trial_and_an_epoch_bar_with_rate_and_eta(tmp_path, image_folder):
    space = tmp_path / "last.yaml"
    space.write_text(LAST_BLOCK_SPACE)
    code, screen = run_in_terminal(
        [sys.executable, "-m", "tuner", "run", "--study", "live", "--space", str(space), "--data", str(image_folder),
         "--weights", "none", "--n-trials", "2", "--no-warm-start", "--storage", f"sqlite:///{tmp_path / 's.db'}",
         "--device", "cpu"], tmp_path)
    assert code == 0, screen
    assert re.search(r"study live: 0/2 trials finished, \d+s elapsed; best val_accuracy none yet", screen), screen
    assert re.search(r"trial 0: lr=\d\.\d\de-03", screen), screen
    assert re.search(r"epoch 1/1 .*\d+/32 .*img/s ETA \d+:\d\d:\d\d", screen), screen
    assert re.search(r"last epoch: trial 0 epoch 1/1 val_accuracy=\d\.\d{4}", screen), screen
    # The log lines still come, above the display.
    assert re.search(r"\[.+:cpu\] trial 0 started", screen)
    # The study's progress, with an ETA once a trial finished, then none when the budget is spent.
    assert re.search(r"study live: 1/2 trials finished, \d+s elapsed, ETA \d+s; best val_accuracy \d\.\d{4} "
                     r"\(trial 0\)", screen), screen
    assert re.search(r"study live: 2/2 trials finished, \d+s elapsed; best val_accuracy", screen), screen


def test_quiet_a_pipe_and_supervised_children_get_no_live_display(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TUNER_PLAIN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(progress_for(False, Terminal()), LiveProgress)
    assert type(progress_for(True, Terminal())) is Progress
    assert type(progress_for(False, io.StringIO())) is Progress
    monkeypatch.setenv("TUNER_PLAIN_PROGRESS", "1")
    assert type(progress_for(False, Terminal())) is Progress


@pytest.mark.parametrize("params, text", [
    ({"lr": 0.00354, "freeze": "head", "batch_size": 64}, "batch_size=64 freeze=head lr=3.54e-03"),
    ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}, "momentum=0.9 nesterov=True weight_decay=0"),
    ({}, ""),
])
def test_short_params(params, text):
    assert short_params(params) == text
