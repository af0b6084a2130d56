"""What crosses Ray Data between the stages of an index run, and the CPU stages themselves
(probe and decode, as Ray tasks). Light on purpose: a decode worker imports this and
indexer.stages, never torch, FAISS or the storage code.

A row is one pickled record in one binary column, so Arrow never tries to split it into
columns. An MgvrError on a worker (no ffmpeg there, a model its actor cannot load) travels
as a WorkerError row, and the driver raises it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mgvr.errors import MgvrError
from mgvr.indexer.decode import FrameRecipe
from mgvr.indexer.stages import (
    DecodeJob,
    FileFailure,
    ProbedFile,
    decode_job,
    decode_jobs,
    probe_file,
)

if TYPE_CHECKING:
    from mgvr.indexer.writer import EncodedClip

COLUMN = "record"
Row = dict[str, bytes]


@dataclass(frozen=True)
class EncodedClipOf:
    file: ProbedFile
    clip: EncodedClip


@dataclass(frozen=True)
class WorkerError:
    node: str
    error: MgvrError


def pack(record: object) -> Row:
    return {COLUMN: pickle.dumps(record, protocol=5)}


def unpack(row: Row) -> object:
    return pickle.loads(row[COLUMN])


def worker_error(error: MgvrError) -> WorkerError:
    import ray

    return WorkerError(ray.util.get_node_ip_address(), error)


def _guarded(work: Callable[[], list]) -> list[Row]:
    try:
        return [pack(record) for record in work()]
    except MgvrError as e:
        return [pack(worker_error(e))]


def probe_rows(row: Row, clip_seconds: float, timeout_s: float) -> list[Row]:
    """A FileEntry -> its DecodeJobs, or its FileFailure."""
    entry = unpack(row)

    def work() -> list:
        probed = probe_file(entry, clip_seconds, timeout_s)
        return [probed] if isinstance(probed, FileFailure) else decode_jobs(probed, clip_seconds)

    return _guarded(work)


def decode_rows(row: Row, frames: int, recipe: FrameRecipe, timeout_s: float) -> list[Row]:
    """A DecodeJob -> its DecodedClipOf records, or the file's FileFailure."""
    job = unpack(row)
    if not isinstance(job, DecodeJob):
        return [row]  # a failure or an error passes through to the driver

    def work() -> list:
        result = decode_job(job, frames, recipe, timeout_s)
        return [result] if isinstance(result, FileFailure) else result

    return _guarded(work)
