"""EncodeActor: the encode stage of a Ray index run, a callable class for Ray Data's
map_batches (a pool of actors, each on one GPU or a fraction of a CPU core)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mgvr.config import IndexConfig
from mgvr.distributed.records import (
    COLUMN,
    EncodedClipOf,
    WorkerError,
    pack,
    unpack,
    worker_error,
)
from mgvr.errors import MgvrError
from mgvr.indexer.stages import DecodedClipOf


class EncodeActor:
    """Loads the index's model once, then encodes batches of decoded clips with the local
    run's EncodeStage, so both give the same vectors. Failures and errors pass through."""

    def __init__(self, root: str, config: IndexConfig, device: str) -> None:
        from mgvr.indexer.encode import EncodeStage

        if device == "cpu":
            import torch

            # Ray gives a fractional actor one thread; like a local run, encode with the
            # node's cores, which ffmpeg shares (this process runs nothing else).
            torch.set_num_threads(os.cpu_count() or 1)
        self.error: WorkerError | None = None
        try:
            self.stage = EncodeStage.for_index(Path(root), config, device)
        except MgvrError as e:  # reported with the first batch: Ray Data would retry a raise
            self.error = worker_error(e)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[bytes]]:
        if self.error is not None:
            return {COLUMN: [pack(self.error)[COLUMN]]}
        records = [unpack({COLUMN: value}) for value in batch[COLUMN]]
        clips = [r for r in records if isinstance(r, DecodedClipOf)]
        try:
            encoded = iter(self.stage.encode(clips))
        except MgvrError as e:
            return {COLUMN: [pack(worker_error(e))[COLUMN]]}
        out = [EncodedClipOf(r.file, next(encoded)) if isinstance(r, DecodedClipOf) else r
               for r in records]
        return {COLUMN: [pack(r)[COLUMN] for r in out]}
