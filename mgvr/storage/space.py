"""Running out of disk space: one line naming the index and the space, never a traceback.

Commits write new files beside the old ones and switch in one transaction, so a full disk
only ever fails the commit in progress: the last one stays whole (its new files are deleted by
the commit's abort, or as orphans by the next run).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from mgvr.errors import DiskFullError
from mgvr.storage.layout import IndexLayout

_FULL = ("no space left on device", "database or disk is full", "disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, OSError | sqlite3.OperationalError | RuntimeError):
        return any(text in str(error).lower() for text in _FULL)
    return False


@contextmanager
def disk_full_as_error(layout: IndexLayout) -> Iterator[None]:
    """Turn a full disk met inside the block into DiskFullError (exit code 6)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        free = shutil.disk_usage(layout.root).free if layout.root.exists() else 0
        raise DiskFullError(
            f"{layout.root}: out of disk space ({free / 1e6:.1f} MB free); the last commit is "
            f"intact: free at least {needed_mb(layout):.0f} MB there and run again") from e


def needed_mb(layout: IndexLayout) -> float:
    """A fair ask: twice the largest part with its sidecar (one commit's worth of files is
    written beside the old ones before they are retired), at least 10 MB."""
    parts = [p for p in layout.data_files() if p.name.endswith((".parquet", ".rows.npy"))]
    largest = sorted((p.stat().st_size for p in parts), reverse=True)[:2]
    return max(10.0, 2 * sum(largest) / 1e6)
