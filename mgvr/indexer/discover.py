"""Walk a folder, pick the files that may be videos, and diff them against the catalog.

Only `stat` is used for files seen before, so an unchanged corpus is checked without decoding
or hashing. New files are hashed (size plus first and last MiB) only to recognise a file that
was renamed or moved since the last run, so its clips are kept instead of re-encoded.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from mgvr.storage.catalog import Catalog, VideoRecord

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".qt", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".mpe", ".m2v",
    ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".flv", ".f4v", ".3gp", ".3g2", ".ogv", ".ogg",
    ".vob", ".mxf", ".dv", ".rm", ".rmvb", ".nut", ".y4m", ".divx", ".h264", ".hevc", ".265",
}
# Leading bytes of container formats, for video files whose name has no telling extension.
_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),  # ASF / WMV
    (0, b"YUV4MPEG2"),
)


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int
    content_key: str | None = None  # set once hashed (to match moves), so it is hashed once


CONTENT_KEY_BYTES = 1 << 20


@dataclass
class Plan:
    new: list[FileEntry] = field(default_factory=list)
    changed: list[FileEntry] = field(default_factory=list)
    retried: list[FileEntry] = field(default_factory=list)
    moved: list[tuple[VideoRecord, FileEntry]] = field(default_factory=list)
    restored: list[tuple[VideoRecord, FileEntry]] = field(default_factory=list)  # back, unchanged
    deferred: list[FileEntry] = field(default_factory=list)  # still being written
    unchanged: int = 0
    skipped_failed: int = 0
    known: int = 0  # files of the index under this folder before the run
    vanished: list[VideoRecord] = field(default_factory=list)  # recorded, not found this time
    kept_unreadable: int = 0  # recorded files under folders that could not be read: kept
    unreadable_dirs: list[str] = field(default_factory=list)
    unreadable_files: list[tuple[str, str]] = field(default_factory=list)  # (path, why): kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why not a file)

    @property
    def to_index(self) -> list[FileEntry]:
        return self.new + self.changed + self.retried


def _sniff(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(189)
    except OSError:
        return False
    if head[:1] == b"\x47" and head[188:189] == b"\x47":  # MPEG-TS: a sync byte every 188
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _MAGIC)


def is_candidate(path: str) -> bool:
    """Worth probing: a video extension, or container magic bytes at the start of the file."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS or _sniff(path)


_NOT_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def walk(root: Path, plan: Plan) -> Iterator[FileEntry]:
    """Regular files under root (symlinked files followed, symlinked folders not: no loops).
    Folders that cannot be read go to `plan.unreadable_dirs`, files that cannot be looked at
    (or links to nothing) to `plan.unreadable_files`, both kept in the index; entries that are
    not regular files (pipes, sockets, devices, links to them) go to `plan.skipped`."""
    def unreadable(error: OSError) -> None:
        plan.unreadable_dirs.append(error.filename)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                info = os.stat(path)
            except FileNotFoundError:
                if os.path.islink(path):  # a link into a disk that is not there: kept
                    plan.unreadable_files.append((path, "a symbolic link to nothing"))
                continue  # gone between the listing and the stat
            except OSError as e:  # a folder without search permission, EIO, a stale NFS handle
                plan.unreadable_files.append((path, e.strerror or type(e).__name__))
                continue
            if stat.S_ISREG(info.st_mode):
                yield FileEntry(path, info.st_size, info.st_mtime_ns)
                continue
            kind = next((what for test, what in _NOT_FILES if test(info.st_mode)), None)
            if kind:
                plan.skipped.append((path, f"not a regular file: {kind}"))


def content_key(path: str, size: int) -> str | None:
    """Identity of a file's content that survives renames: size, first and last MiB."""
    digest = hashlib.sha256(str(size).encode())
    try:
        with open(path, "rb") as f:
            digest.update(f.read(CONTENT_KEY_BYTES))
            if size > CONTENT_KEY_BYTES:
                f.seek(max(CONTENT_KEY_BYTES, size - CONTENT_KEY_BYTES))
                digest.update(f.read(CONTENT_KEY_BYTES))
    except OSError:
        return None
    return digest.hexdigest()


def is_settled(entry: FileEntry, settle_seconds: float) -> bool:
    """False for a file modified within the last `settle_seconds`: probably still being copied."""
    return time.time_ns() - entry.mtime_ns >= settle_seconds * 1e9


def still_same(entry: FileEntry) -> bool:
    """Second look before a file's clips are committed: a file that changed meanwhile waits."""
    try:
        info = os.stat(entry.path)
    except OSError:
        return False
    return (info.st_size, info.st_mtime_ns) == (entry.size, entry.mtime_ns)


def _under(path: str, folders: list[str]) -> bool:
    return any(path.startswith(folder.rstrip("/") + "/") for folder in folders)


def plan(root: Path, catalog: Catalog, retry_failed: bool = False,
         settle_seconds: float = 0.0) -> Plan:
    result = Plan()
    known = catalog.videos_under(str(root))
    result.known = sum(1 for r in known.values() if r.status != "failed")
    seen: set[str] = set()
    for entry in walk(root, result):
        record = known.get(entry.path)
        if record is not None:
            seen.add(entry.path)
            if (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns):
                if record.status == "indexed":
                    result.unchanged += 1
                elif record.status == "missing":
                    result.restored.append((record, entry))
                elif retry_failed:
                    result.retried.append(entry)
                else:
                    result.skipped_failed += 1
                continue
        elif not is_candidate(entry.path):
            continue
        if not is_settled(entry, settle_seconds):
            result.deferred.append(entry)
        elif record is None:
            result.new.append(entry)
        else:
            result.changed.append(entry)
    # Only what may be a video is worth a word (and exit code 3): indexed, or named like one.
    result.unreadable_files = [(path, why) for path, why in result.unreadable_files
                               if path in known or Path(path).suffix.lower() in VIDEO_EXTENSIONS]
    gone = [record for path, record in known.items() if path not in seen]
    unreadable = {path for path, _ in result.unreadable_files}
    kept = [r for r in gone if r.path in unreadable or _under(r.path, result.unreadable_dirs)]
    result.kept_unreadable = len(kept)
    gone = [r for r in gone if r not in kept]
    result.vanished, result.new = _match_moves(gone, result.new, result.moved)
    return result


def _match_moves(removed: list[VideoRecord], new: list[FileEntry],
                 moved: list[tuple[VideoRecord, FileEntry]]
                 ) -> tuple[list[VideoRecord], list[FileEntry]]:
    """Pair vanished records with new files of the same content; returns what is left of each."""
    # A failed record is no source of a move: it has no clips to keep (the new path is
    # indexed, or fails, on its own).
    by_key = {(r.content_key, r.size): r for r in removed
              if r.content_key and r.status != "failed"}
    if not by_key:
        return removed, new
    still_new = []
    for entry in new:
        entry = replace(entry, content_key=content_key(entry.path, entry.size))
        record = by_key.pop((entry.content_key, entry.size), None)
        if record is None:
            still_new.append(entry)
        else:
            moved.append((record, entry))
    paired = {record.path for record, _ in moved}
    return [r for r in removed if r.path not in paired], still_new
