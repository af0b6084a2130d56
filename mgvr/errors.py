"""Errors a user can act on, each with the exit code the CLI returns for it.

Every message names what went wrong, with which file, and what to do next.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_LOCKED = 4
EXIT_REMOVAL_REFUSED = 5
EXIT_NO_SPACE = 6


class MgvrError(Exception):
    """Base class: a failure explained in one line; nothing already indexed was lost."""

    exit_code = EXIT_FAILED


class UsageError(MgvrError):
    """Bad flags or bad input: an empty query, a missing folder, a non-positive count."""

    exit_code = EXIT_USAGE


class IndexNotFoundError(UsageError):
    """No mgvr index at the given location."""


class IncompatibleIndexError(UsageError):
    """The index was built with another model or format than the one asked for."""


class ModelLoadError(MgvrError):
    """Model architecture or weights could not be loaded."""


class DecoderMissingError(MgvrError):
    """ffmpeg or ffprobe is not installed or not runnable."""


class DecodeError(MgvrError):
    """One video could not be decoded; the run records it and goes on.

    `reason` is a short machine-readable word stored in the catalog
    (corrupt, unsupported-codec, no-video-stream, zero-frames, timeout, permission-denied,
    not-a-video, empty).
    """

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # pickled with its three fields (a Ray worker sends it back)
        return type(self), (self.path, self.reason, self.detail)


class LockedError(MgvrError):
    """Another index run holds the writer lock."""

    exit_code = EXIT_LOCKED


class ReadOnlyIndexError(MgvrError):
    """The index cannot be written by this user (a read-only mount, another user's folder)."""


class IndexDamagedError(MgvrError):
    """A file of the index is missing, unreadable or fails its checksum; the message says how
    to recover (usually `mgvr verify --repair`)."""


class DiskFullError(MgvrError):
    """The index's file system ran out of space; the last commit is intact."""

    exit_code = EXIT_NO_SPACE
