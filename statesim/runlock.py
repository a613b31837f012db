"""An exclusive lock on a run folder, held for a run's life, so two processes never write one folder.

``fcntl.flock`` on ``RUN_DIR/.statesim.lock``: the kernel drops the lock when the holder exits, however it
exits (a SIGKILL too), so a stale lock never blocks a ``--resume``. The file records the holder's pid for
the error message; it is left in place after the run (deleting a lock file races with the next holder).
"""
from __future__ import annotations

import os
from pathlib import Path

from statesim.errors import StatesimError

LOCK_NAME = ".statesim.lock"


class RunFolderLocked(StatesimError):
    """Another live statesim process holds the run folder."""


class RunLock:
    """A held lock; :meth:`release` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    @classmethod
    def acquire(cls, run_dir: str | Path) -> "RunLock":
        """Lock ``run_dir`` or raise :class:`RunFolderLocked` naming the holder's pid."""
        import fcntl

        path = Path(run_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise StatesimError(f"cannot lock the run folder {run_dir}: {path} cannot be opened "
                                f"({exc.strerror or exc}). Choose another --out.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderLocked(
                f"the run folder {run_dir} is in use by another statesim process (pid {holder}, holding {path}). "
                f"Wait for that run to finish or stop it (Ctrl-C checkpoints it), then --resume; or choose "
                f"another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        """Free the lock (closing the descriptor drops the flock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
