"""Streaming sha256 of a file: the one checksum routine of mgvr (index files, model weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
