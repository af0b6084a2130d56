"""How `mgvr search` finds a running `mgvr serve`: a small JSON file in the index directory.

`<index>/serve.json` holds the server's pid, address, the index it serves (resolved path) and,
when it needs one, its token (the file is readable by its owner only). It is written
atomically when the server is listening and removed when it stops; a file left by a killed
server is recognised by its dead pid (or by a refused connection) and ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SERVE_FILENAME = "serve.json"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServeInfo:
    pid: int
    port: int
    index: str  # os.path.realpath of the index directory
    device: str
    started_at: float
    host: str = HOST  # the address it listens on
    token: str | None = None  # what every request must carry, when not on loopback only

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches it (a wildcard address means loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    def alive(self) -> bool:
        """Whether the recorded process exists (it may still be another program reusing the pid;
        the server's answer, which names its index, settles that)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def index_key(index_dir: Path) -> str:
    return os.path.realpath(index_dir)


def read(index_dir: Path) -> ServeInfo | None:
    """The recorded server of this index, or None when there is none or the file is unreadable."""
    try:
        data = json.loads((Path(index_dir) / SERVE_FILENAME).read_text())
        return ServeInfo(**{f.name: data[f.name] for f in fields(ServeInfo) if f.name in data})
    except (OSError, ValueError, TypeError):
        return None


def write(index_dir: Path, info: ServeInfo) -> None:
    path = Path(index_dir) / SERVE_FILENAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the token
    with os.fdopen(descriptor, "w") as f:
        f.write(json.dumps(asdict(info), indent=2) + "\n")
    tmp.replace(path)


def remove_if_ours(index_dir: Path, pid: int) -> None:
    """Remove the file only if it still names `pid` (a newer server may have replaced it)."""
    info = read(index_dir)
    if info is not None and info.pid == pid:
        (Path(index_dir) / SERVE_FILENAME).unlink(missing_ok=True)
