"""The local index pipeline: probe and decode on threads (each running one ffmpeg process),
encode in batches on the device, assemble files, commit as it goes.

An ordered, bounded window of in-flight decode jobs keeps memory flat however long the corpus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mgvr.indexer import discover
from mgvr.indexer.assembly import Assembly
from mgvr.indexer.encode import EncodeStage
from mgvr.indexer.options import IndexOptions
from mgvr.indexer.stages import (
    DecodedClipOf,
    DecodeJob,
    FileFailure,
    decode_job,
    ordered_futures,
    plan_jobs,
)


def run_local(entries: list[discover.FileEntry], stage: EncodeStage, frames: int,
              clip_seconds: float, options: IndexOptions, assembly: Assembly,
              after_batch: Callable[[], None]) -> dict[str, float]:
    """Index `entries`; returns seconds per stage (decode_wait, encode, write)."""
    timings = {"decode_wait": 0.0, "encode": 0.0, "write": 0.0}
    recipe = stage.recipe
    timeout = options.decode_timeout_s
    workers = options.workers

    def decode(job: DecodeJob | FileFailure) -> list[DecodedClipOf] | FileFailure:
        return job if isinstance(job, FileFailure) else decode_job(job, frames, recipe, timeout)

    def encode(batch: list[DecodedClipOf]) -> None:
        batch = [item for item in batch if not assembly.has_failed(item.file.entry.path)]
        if not batch:
            return
        started = time.perf_counter()
        encoded = stage.encode(batch)
        timings["encode"] += time.perf_counter() - started
        started = time.perf_counter()
        for item, clip in zip(batch, encoded, strict=True):
            assembly.add(item.file, clip)
        after_batch()
        timings["write"] += time.perf_counter() - started

    jobs = plan_jobs(entries, clip_seconds, workers, timeout)
    batch: list[DecodedClipOf] = []
    batch_frames = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        filling = True
        for future in ordered_futures(pool, decode, jobs, workers * 2):
            if filling and batch and not future.done():
                # Start encoding with the first decoded clips rather than wait for a full
                # batch. Only at the start: later, small batches would cost more (on the CPU,
                # torch's threads then fight ffmpeg's for the cores).
                encode(batch)
                batch, batch_frames, filling = [], 0, False
            waited = time.perf_counter()
            result = future.result()
            timings["decode_wait"] += time.perf_counter() - waited
            if isinstance(result, FileFailure):
                assembly.fail(result)
                continue
            for item in result:
                batch.append(item)
                batch_frames += len(item.clip.frames)
                if batch_frames >= stage.frame_batch_size():
                    encode(batch)
                    batch, batch_frames, filling = [], 0, False
        encode(batch)
    return timings
