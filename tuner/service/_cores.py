"""The CPU cores of one machine shared among the tuner workers running on it: a pid file each."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

LOG = logging.getLogger(__name__)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_folder() -> Path:
    """TUNER_WORKERS_DIR, else per user in the machine's own temp folder: a local folder, as
    the count is of this machine's processes (a shared folder would count other machines').
    Named by uid, not user name: a container's uid may have no passwd entry (and no LOGNAME)."""
    given = os.environ.get("TUNER_WORKERS_DIR")
    return Path(given) if given else Path(tempfile.gettempdir()) / f"tuner-workers-{os.getuid()}"


def held(path: Path) -> bool:
    """Whether a live worker holds `path`'s lock; a file nobody holds is removed.

    The lock, not the pid, tells a live worker: the kernel drops it when its process dies,
    whereas a killed worker's pid may have been reused by an unrelated process since.
    """
    try:
        handle = open(path, "a")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: count it rather than give this worker too many threads
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        # Removed while we hold the lock: a worker joining under this name meanwhile waits
        # for it, then finds its file gone and makes a new one (CoreShare.join).
        path.unlink(missing_ok=True)
        return False


class CoreShare:
    """Gives each of the live tuner workers of this machine its share of the cores.

    torch runs one compute thread per core in every process. Workers started one by one
    (by hand, by a scheduler) each took every core: three of them on two cores ran six
    spinning OpenMP threads, and an epoch took many times longer than one worker's alone.
    `tuner worker --processes N` sets OMP_NUM_THREADS for its children; workers started
    separately count each other here instead, through a pid file each in a local folder,
    and every trial starts with max(1, cores // workers) threads (TorchThreads.share). Each
    worker holds an flock on its file; a killed worker's file is left unlocked, recognised so
    (even if its pid now belongs to another process) and removed.
    """

    def __init__(self, folder: Path | None = None, cores: int | None = None) -> None:
        self.folder = folder or default_folder()
        self.cores = cores or machine_cores()
        self.mine = self.folder / str(os.getpid())
        self.handle = None

    def join(self) -> bool:
        """Count this worker in; False (with a warning) where the folder cannot be written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while self.handle is None:
                handle = open(self.mine, "a")
                fcntl.flock(handle, fcntl.LOCK_EX)
                if os.path.exists(self.mine) and os.stat(self.mine).st_ino == os.fstat(handle.fileno()).st_ino:
                    self.handle = handle
                else:
                    handle.close()  # removed as a dead worker's before we locked it: again
        except OSError as error:
            LOG.warning("cores not shared with other tuner workers: cannot write %s (%s); set "
                        "OMP_NUM_THREADS or TUNER_WORKERS_DIR", self.folder, error)
            return False
        return True

    def leave(self) -> None:
        if self.handle is not None:
            self.mine.unlink(missing_ok=True)
            self.handle.close()
            self.handle = None

    def workers(self) -> int:
        """The live workers of this machine, this one included."""
        count = 0
        for path in self.folder.iterdir() if self.folder.is_dir() else ():
            if path.name.isdigit() and held(path):
                count += 1
        return max(count, 1)
