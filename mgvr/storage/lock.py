"""Single-writer lock for an index directory (flock: released by the kernel if the holder dies).

The lock file holds the holder's pid and command (`index`, `compact`, `verify --repair`), so a
second writer can say who is in the way. Readers never take it; `mgvr verify` without
--repair takes a shared lock when it can (so it does not read a half-made commit) and needs no
write access at all.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from mgvr.errors import LockedError, ReadOnlyIndexError

POLL_S = 0.2


class WriterLock:
    def __init__(self, path: Path, wait_s: float = 0.0, command: str = "index",
                 shared: bool = False, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_wait = on_wait
        self.wait_s = wait_s
        self.command = command
        self.shared = shared
        self._fd: int | None = None

    def _open(self) -> int | None:
        if not self.shared:
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError as e:
                raise ReadOnlyIndexError(
                    f"{self.path.parent}: this user cannot write the index (permission denied "
                    f"on {self.path.name}); search, status and verify work read-only; run "
                    f"`mgvr {self.command}` as a user who can write it") from e
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError:
            return None  # no lock file or not readable: nobody can be writing through it

    def __enter__(self) -> WriterLock:
        fd = self._open()
        if fd is None:
            return self
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").split(maxsplit=1)
                pid = holder[0] if holder else "unknown"
                command = holder[1] if len(holder) > 1 else "index"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockedError(
                        f"{self.path}: another `mgvr {command}` (pid {pid}) is writing this "
                        "index; wait for it, or pass --wait SECONDS") from None
                if self.on_wait is not None:
                    self.on_wait(f"waiting for `mgvr {command}` (pid {pid}) to finish")
                    self.on_wait = None
                time.sleep(POLL_S)
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.command}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
