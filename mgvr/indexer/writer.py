"""IndexWriter: stages file outcomes and commits them as one new generation.

A commit closes the open Parquet part, writes the next FAISS generation beside the current one,
then makes both current in one SQLite transaction. Until that transaction, readers and a
restarted run see the previous generation only; files of an unfinished commit are orphans that
`remove_orphans` deletes at the next start.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from mgvr.config import IndexConfig
from mgvr.storage.catalog import Catalog, NewClip, VideoUpdate
from mgvr.storage.coarse import CoarseIndex
from mgvr.storage.fine import FinePartWriter, FineRow
from mgvr.storage.layout import IndexLayout
from mgvr.storage.maintenance import part_metadata

KEEP_PREVIOUS_GENERATIONS = 1  # readers that opened the previous generation keep working


@dataclass(frozen=True)
class EncodedClip:
    index: int
    start_s: float
    end_s: float
    frame_times: np.ndarray  # (n,) float32
    features: np.ndarray  # (n, D) float32, normalised
    coarse: np.ndarray  # (D,) float32, normalised


class IndexWriter:
    def __init__(self, layout: IndexLayout, catalog: Catalog, config: IndexConfig,
                 coarse: CoarseIndex) -> None:
        self.layout = layout
        self.catalog = catalog
        self.config = config
        self.coarse = coarse
        self.next_clip_id = catalog.next_clip_id()
        self._part: FinePartWriter | None = None
        self._part_name: str | None = None
        self._removals: list[str] = []
        # Vectors of replaced or deleted files, removed in one pass per commit: each removal
        # scans the whole FAISS index.
        self._stale_clip_ids: list[int] = []
        self._moves: list[tuple[str, str, int, int]] = []
        self._updates: list[VideoUpdate] = []
        self.clips_added = 0
        self.staged_clips = 0
        self.last_commit = time.monotonic()

    def _drop_existing(self, path: str) -> None:
        """Schedule a file's old clips to leave the coarse index and catalog at commit."""
        clip_ids = self.catalog.clip_ids_of(path)
        if clip_ids is not None:
            self._stale_clip_ids += clip_ids
            self._removals.append(path)

    def remove(self, path: str) -> None:
        self._drop_existing(path)

    def move(self, old_path: str, new_path: str, size: int, mtime_ns: int) -> None:
        """A renamed file keeps its clips and vectors; only its catalog path changes."""
        self._moves.append((old_path, new_path, size, mtime_ns))

    def fail(self, path: str, size: int, mtime_ns: int, content_key: str | None, reason: str,
             error: str) -> None:
        self._drop_existing(path)
        self._updates.append(VideoUpdate(path, size, mtime_ns, "failed", content_key=content_key,
                                         reason=reason, error=error))

    def add(self, path: str, size: int, mtime_ns: int, content_key: str | None,
            clips: list[EncodedClip], duration_s: float, width: int, height: int) -> None:
        self._drop_existing(path)
        part = self._open_part()
        new_clips = []
        for clip in clips:
            clip_id = self.next_clip_id
            self.next_clip_id += 1
            row = part.append(FineRow(clip_id, clip.frame_times, clip.features.astype(np.float16),
                                      clip.coarse))
            new_clips.append(NewClip(clip_id, clip.index, clip.start_s, clip.end_s,
                                     len(clip.frame_times), self._part_name, row))
        self.coarse.add(np.array([c.id for c in new_clips], np.int64),
                        np.stack([clip.coarse for clip in clips]))
        self._updates.append(VideoUpdate(path, size, mtime_ns, "indexed", tuple(new_clips),
                                         content_key=content_key, duration_s=duration_s,
                                         width=width, height=height))
        self.staged_clips += len(new_clips)

    def _open_part(self) -> FinePartWriter:
        if self._part is None:
            self._part_name = self.layout.fine_part_name(self.catalog.next_part_number())
            self._part = FinePartWriter(self.layout.fine_part(self._part_name),
                                        part_metadata(self.config))
        return self._part

    def pending(self) -> bool:
        return bool(self._removals or self._moves or self._updates)

    def commit(self) -> None:
        """Make everything staged durable and visible as the next generation."""
        if not self.pending():
            return
        part_rows = 0
        if self._part is not None:
            self._part.close()
            part_rows = self._part.rows
        self.coarse.remove(self._stale_clip_ids)
        generation = self.layout.next_generation(self.catalog.generation())
        self.coarse.save(self.layout.coarse(generation))
        with self.catalog.transaction():
            for path in self._removals:
                self.catalog.remove_video(path)
            for old_path, new_path, size, mtime_ns in self._moves:
                self.catalog.move_video(old_path, new_path, size, mtime_ns)
            if self._part is not None:
                self.catalog.add_part(self._part_name, part_rows)
            for update in self._updates:
                self.catalog.apply(update)
            self.catalog.set_next_clip_id(self.next_clip_id)
            self.catalog.set_generation(generation)
        for old in self.layout.coarse_generations():
            if old < generation - KEEP_PREVIOUS_GENERATIONS:
                self.layout.coarse(old).unlink(missing_ok=True)
        self.clips_added += self.staged_clips
        self.staged_clips = 0
        self._part = None
        self._part_name = None
        self._removals.clear()
        self._stale_clip_ids.clear()
        self._moves.clear()
        self._updates.clear()
        self.last_commit = time.monotonic()

    def abort(self) -> None:
        if self._part is not None:
            with contextlib.suppress(Exception):
                self._part.abort()
