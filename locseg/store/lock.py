"""One writer at a time: the lock file ``<store>.lock``.

A writer holds an exclusive ``flock(2)`` on ``<store>.lock`` for as long as it
has the store open, and writes its pid and host into the file for the message
a second writer gets. The kernel releases the lock when the process ends,
however it ends (SIGKILL included), so a lock file left by a dead writer is
never stale: the next writer simply takes it. The lock is released by deleting
the file while holding it; a writer that locked a file which has just been
deleted notices (the path no longer names the file it holds) and tries again.

Two stores opened for writing in one process also exclude each other. Readers
take no lock. POSIX only (``fcntl``); on network file systems ``flock`` works
only where the file system supports it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from locseg.errors import LocsegError

_ATTEMPTS = 10


class StoreLockedError(LocsegError):
    """A feature store is already open for writing (by this or another process)."""


class WriterLock:
    """The writer lock of the store at ``store_path``, taken on construction.

    Attributes:
        path: the lock file, ``<store_path>.lock``.

    Raises:
        StoreLockedError: another writer holds the lock.
    """

    def __init__(self, store_path: str | Path):
        store_path = Path(store_path)
        self.path = store_path.with_name(store_path.name + ".lock")
        self._fd: int | None = None
        for _ in range(_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"feature store {store_path} is open for writing by {holder} (lock file {self.path}); "
                    "wait for it to finish, or open the store with mode='r'"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                self._fd = fd
                return
            os.close(fd)  # the holder deleted the file between our open and flock
        raise StoreLockedError(f"could not take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Delete the lock file and release the lock (idempotent)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    """``process <pid> on <host>``, as the holder wrote it, or a generic phrase."""
    try:
        fields = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        fields = []
    if len(fields) >= 2 and fields[0].isdigit():
        return f"process {fields[0]} on {fields[1]}"
    return "another writer"
