"""One training run per output folder: an advisory lock on ``OUT/.lock``.

The lock is an ``flock`` on an open file, so the operating system drops it when the process ends,
however it ends (a killed run leaves no stale lock). Where ``fcntl`` is missing (Windows) runs are
not locked.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock", "holder"]

LOCK_FILE = ".lock"


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def holder(folder: Path) -> str | None:
    """``"PID n"`` of the run that holds ``folder``'s lock now, else None."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        with open(path, "r+") as f:
            if _try_lock(f):
                return None     # closing the file drops the lock again
            pid = f.read().strip()
    except OSError:
        return None
    return f"PID {pid}" if pid.isdigit() else "another process"


class RunLock:
    """Holds ``folder``'s lock until :meth:`release`; ``acquire`` returns who holds it when it is taken."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._file = None

    def acquire(self) -> str | None:
        if fcntl is None:
            return None
        f = open(self.path, "a+")
        if not _try_lock(f):
            f.close()
            return holder(self.path.parent) or "another process"
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
