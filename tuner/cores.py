"""The CPU cores of one machine shared among the tuner workers running on it: a pid file each."""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_folder() -> Path:
    """TUNER_WORKERS_DIR, else per user in the machine's own temp folder: a local folder, as
    the count is of this machine's processes (a shared folder would count other machines')."""
    given = os.environ.get("TUNER_WORKERS_DIR")
    return Path(given) if given else Path(tempfile.gettempdir()) / f"tuner-workers-{getpass.getuser()}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class CoreShare:
    """Gives each of the live tuner workers of this machine its share of the cores.

    torch runs one compute thread per core in every process. Workers started one by one
    (by hand, by a scheduler) each took every core: three of them on two cores ran six
    spinning OpenMP threads, and an epoch took many times longer than one worker's alone.
    `tuner worker --processes N` sets OMP_NUM_THREADS for its children; workers started
    separately count each other here instead, through a pid file each in a local folder,
    and every trial starts with max(1, cores // workers) threads (Worker.share_cores). A killed worker leaves
    its file behind; it is recognised by its dead pid and removed.
    """

    def __init__(self, folder: Path | None = None, cores: int | None = None) -> None:
        self.folder = folder or default_folder()
        self.cores = cores or machine_cores()
        self.mine = self.folder / str(os.getpid())

    def join(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mine.touch()

    def leave(self) -> None:
        self.mine.unlink(missing_ok=True)

    def workers(self) -> int:
        """The live workers of this machine, this one included."""
        count = 0
        for path in self.folder.iterdir() if self.folder.is_dir() else ():
            if not path.name.isdigit():
                continue
            if alive(int(path.name)):
                count += 1
            else:
                path.unlink(missing_ok=True)
        return max(count, 1)
