"""The decode side of an index run, as plain functions over small records, shared by the local
pipeline (threads running ffmpeg) and the Ray pipeline (tasks on a cluster):

    FileEntry --probe_file--> ProbedFile | FileFailure
    ProbedFile --decode_jobs--> DecodeJob (up to CLIPS_PER_DECODE consecutive clips)
    DecodeJob --decode_job--> [DecodedClipOf] | FileFailure

No torch here: decoding runs in ffmpeg subprocesses, anywhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from mgvr.errors import DecodeError
from mgvr.indexer import decode, discover

T = TypeVar("T")
R = TypeVar("R")
# Consecutive clips of a file decoded by one ffmpeg process: it saves a seek (decoding from the
# previous keyframe) per clip, while a long film still spreads over all decode workers.
CLIPS_PER_DECODE = 4


@dataclass(frozen=True)
class ProbedFile:
    entry: discover.FileEntry
    content_key: str | None
    info: decode.VideoInfo
    clip_count: int


@dataclass(frozen=True)
class FileFailure:
    entry: discover.FileEntry
    content_key: str | None
    error: DecodeError


@dataclass(frozen=True)
class DecodeJob:
    file: ProbedFile
    spans: tuple[decode.ClipSpan, ...]


@dataclass(frozen=True)
class DecodedClipOf:
    file: ProbedFile
    clip: decode.DecodedClip


def probe_file(entry: discover.FileEntry, clip_seconds: float,
               timeout_s: float) -> ProbedFile | FileFailure:
    key = entry.content_key or discover.content_key(entry.path, entry.size)
    try:
        info = decode.probe(entry.path, timeout_s)
    except DecodeError as e:
        return FileFailure(entry, key, e)
    return ProbedFile(entry, key, info, len(decode.plan_clips(info.duration_s, clip_seconds)))


def decode_jobs(probed: ProbedFile, clip_seconds: float) -> list[DecodeJob]:
    spans = decode.plan_clips(probed.info.duration_s, clip_seconds)
    return [DecodeJob(probed, tuple(group))
            for group in decode.group_clips(spans, CLIPS_PER_DECODE)]


def decode_job(job: DecodeJob, frames: int, recipe: decode.FrameRecipe,
               timeout_s: float) -> list[DecodedClipOf] | FileFailure:
    try:
        clips = decode.decode_clips(job.file.entry.path, job.file.info, list(job.spans), frames,
                                    recipe, timeout_s)
    except DecodeError as e:
        return FileFailure(job.file.entry, job.file.content_key, e)
    return [DecodedClipOf(job.file, clip) for clip in clips]


def ordered_futures(pool: Executor, fn: Callable[[T], R], items: Iterable[T],
                    window: int) -> Iterator[Future[R]]:
    """Submit fn(item) for each item, at most `window` in flight; yield the futures in order."""
    in_flight: deque[Future[R]] = deque()
    for item in items:
        in_flight.append(pool.submit(fn, item))
        if len(in_flight) >= window:
            yield in_flight.popleft()
    while in_flight:
        yield in_flight.popleft()


def plan_jobs(entries: list[discover.FileEntry], clip_seconds: float, workers: int,
              timeout_s: float) -> Iterator[DecodeJob | FileFailure]:
    """Probe files on workers // 2 threads, in order; yield each file's decode jobs (or its
    failure)."""
    with ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="probe") as pool:
        for future in ordered_futures(pool, lambda e: probe_file(e, clip_seconds, timeout_s),
                                      entries, window=workers * 2):
            probed = future.result()
            if isinstance(probed, FileFailure):
                yield probed
            else:
                yield from decode_jobs(probed, clip_seconds)
