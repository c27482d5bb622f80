"""One training run per output folder: an advisory lock on ``OUT/.lock``; one save at a time per
checkpoint folder: :func:`folder_lock`.

The locks are ``flock`` locks on open files, so the operating system drops them when the process
ends, however it ends (a killed run leaves no stale lock). Where ``fcntl`` is missing (Windows) runs
are not locked.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock", "holder", "folder_lock"]

LOCK_FILE = ".lock"


_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _try_lock(f) -> bool | None:
    """True: locked now; False: another process holds it; None: this filesystem cannot lock (NFS
    without locking, some FUSE/SMB mounts), so runs there go unlocked."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        return False if exc.errno in _HELD else None


def holder(folder: Path) -> str | None:
    """``"PID n"`` of the run that holds ``folder``'s lock now, else None."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        with open(path, "r") as f:     # read-only: the lock file may belong to another user
            if _try_lock(f) is not False:
                return None            # closing the file drops the lock again
            pid = f.read().strip()
    except OSError:
        return None
    return f"PID {pid}" if pid.isdigit() else "another process"


class RunLock:
    """Holds ``folder``'s lock until :meth:`release`; ``acquire`` returns who holds it when it is taken."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._file = None
        self.unlocked_why: str | None = None   # set when the filesystem cannot lock

    def acquire(self) -> str | None:
        if fcntl is None:
            return None
        try:
            f = open(self.path, "a+")
        except PermissionError:          # another user's lock file: flock works on a read-only file too
            f = open(self.path, "r")
        got = _try_lock(f)
        if got is False:
            f.close()
            return holder(self.path.parent) or "another process"
        if got is None:
            f.close()
            self.unlocked_why = f"{self.path.parent}'s filesystem does not support file locks"
            return None
        if f.writable():
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


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` itself (its directory, so no lock file is added to it) while the
    block runs, waiting first for another holder, thread or process. Yields True when locked, False where the
    OS or the filesystem cannot lock a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    except OSError:
        fd = None
    try:
        locked = False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError:   # this filesystem cannot lock a directory (some network filesystems)
                pass
        yield locked
    finally:
        if fd is not None:
            os.close(fd)
