"""IndexWriter: stages file outcomes and commits them as one new generation (storage.Commit).

A commit closes the open Parquet part, writes one new coarse segment holding only the vectors it
adds, then makes both current in one SQLite transaction together with the catalog changes
(removed files become tombstones of their segments). Local runs and the Ray driver both commit
through this class, so there is one way of making a generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mgvr.config import IndexConfig
from mgvr.storage.catalog import Catalog, NewClip, VideoUpdate
from mgvr.storage.commit import Commit
from mgvr.storage.fine import ClipInfo, FinePartWriter, FineRow, part_metadata
from mgvr.storage.layout import IndexLayout


@dataclass(frozen=True)
class EncodedClip:
    index: int
    start_s: float
    end_s: float
    frame_times: np.ndarray  # (n,) float32
    features: np.ndarray  # (n, D) float32, normalised
    coarse: np.ndarray  # (D,) float32, normalised
    thumbnails: bytes = b""  # sprite of the sampled frames (indexer.thumbnails)


@dataclass(frozen=True)
class FileFacts:
    """What a run knows of a file it indexes."""

    path: str
    size: int
    mtime_ns: int
    content_key: str | None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class _Staged:
    facts: FileFacts
    clips: list[tuple[int, EncodedClip, int]] = field(default_factory=list)  # id, clip, row


class IndexWriter:
    def __init__(self, layout: IndexLayout, catalog: Catalog, config: IndexConfig) -> None:
        self.layout = layout
        self.catalog = catalog
        self.config = config
        self.next_clip_id = catalog.next_clip_id()
        self._commit = Commit(layout, catalog)
        self._part: tuple[str, FinePartWriter] | None = None
        self._removals: list[str] = []
        self._moves: list[tuple[str, str, int, int]] = []
        self._missing: list[str] = []
        self._failures: list[VideoUpdate] = []
        self._added: list[_Staged] = []
        self.clips_added = 0
        self.staged_clips = 0
        self.generations = 0  # commits made
        self.last_commit = time.monotonic()

    def remove(self, path: str) -> None:
        """Forget a file: its clips become tombstones at commit."""
        self._removals.append(path)

    def move(self, old_path: str, new_path: str, size: int, mtime_ns: int) -> None:
        """A renamed file (or one back from missing) keeps its clips and vectors; only its
        catalog record changes."""
        self._moves.append((old_path, new_path, size, mtime_ns))

    def mark_missing(self, paths: list[str]) -> None:
        self._missing += paths

    def fail(self, facts: FileFacts, reason: str, error: str) -> None:
        self._drop_existing(facts.path)
        self._failures.append(VideoUpdate(facts.path, facts.size, facts.mtime_ns, "failed",
                                          content_key=facts.content_key, reason=reason,
                                          error=error))

    def add(self, facts: FileFacts, clips: list[EncodedClip]) -> None:
        self._drop_existing(facts.path)
        if self._part is None:
            self._part = self._commit.new_part(part_metadata(self.config))
        writer = self._part[1]
        staged = _Staged(facts)
        for clip in clips:
            clip_id = self.next_clip_id
            self.next_clip_id += 1
            info = ClipInfo(facts.path, clip.index, clip.start_s, clip.end_s, facts.size,
                            facts.mtime_ns, facts.content_key, facts.duration_s, facts.width,
                            facts.height)
            row = writer.append(FineRow(clip_id, clip.frame_times,
                                        clip.features.astype(np.float16), clip.coarse, info,
                                        clip.thumbnails))
            staged.clips.append((clip_id, clip, row))
        self._added.append(staged)
        self.staged_clips += len(clips)

    def _drop_existing(self, path: str) -> None:
        """A file indexed before and now re-indexed (or failing): its old clips go at commit."""
        if self.catalog.clip_ids_of(path) is not None:
            self._removals.append(path)

    def pending(self) -> bool:
        return bool(self._removals or self._moves or self._missing or self._failures
                    or self._added)

    def commit(self) -> None:
        """Make everything staged durable and visible as the next generation."""
        if not self.pending():
            return
        commit = self._commit
        segment = None
        if self._part is not None:
            commit.add_part(*self._part)
            ids = np.array([clip_id for s in self._added for clip_id, _, _ in s.clips], np.int64)
            vectors = np.stack([clip.coarse for s in self._added for _, clip, _ in s.clips])
            segment = commit.add_segment(ids, vectors).name
        part = self._part[0] if self._part else None
        updates = self._failures + [
            VideoUpdate(s.facts.path, s.facts.size, s.facts.mtime_ns, "indexed",
                        tuple(NewClip(clip_id, clip.index, clip.start_s, clip.end_s,
                                      len(clip.frame_times), part, row, segment)
                              for clip_id, clip, row in s.clips),
                        content_key=s.facts.content_key, duration_s=s.facts.duration_s,
                        width=s.facts.width, height=s.facts.height)
            for s in self._added]
        removals, moves, missing = list(self._removals), list(self._moves), list(self._missing)
        next_clip_id = self.next_clip_id

        def edit(catalog: Catalog) -> None:
            for path in removals:
                catalog.remove_video(path)
            for old_path, new_path, size, mtime_ns in moves:
                catalog.move_video(old_path, new_path, size, mtime_ns)
            catalog.mark_missing(missing, time.time())
            for update in updates:
                catalog.apply(update)
            catalog.set_next_clip_id(next_clip_id)

        commit.change(edit)
        commit.apply()  # once applied, aborting it does nothing
        self.generations += 1
        self.clips_added += self.staged_clips
        self.staged_clips = 0
        self._commit = Commit(self.layout, self.catalog)
        self._part = None
        for staged in (self._removals, self._moves, self._missing, self._failures, self._added):
            staged.clear()
        self.last_commit = time.monotonic()

    def abort(self) -> None:
        """Drop what was staged since the last commit (the files it wrote included)."""
        self._commit.abort()
        self._part = None
