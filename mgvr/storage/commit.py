"""Commit: the one way a new generation of an index is made (index runs, repair, merges and
compaction, the Ray driver and the benchmarks' synthetic indexes all go through it).

A commit gathers files written beside the current ones (Parquet parts with their sidecars,
FAISS segments), the files it retires, and catalog edits. `apply()` fsyncs, records every new
file's size and sha256, then makes it all current in ONE SQLite transaction that also bumps the
generation. Until that transaction nothing is visible, and a crash at any point leaves the
previous generation whole; files of an unfinished commit are orphans that `remove_orphans`
deletes at the next start. A retired file stays on disk for KEEP_GENERATIONS more commits and
at least RETIRED_MIN_AGE_S seconds, so a reader that opened the previous generation can finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mgvr.hashing import sha256_file
from mgvr.storage.catalog import Catalog, SegmentRecord
from mgvr.storage.coarse import FLAT_MAX_ROWS, build_segment, write_segment
from mgvr.storage.fine import FinePartWriter
from mgvr.storage.layout import IndexLayout

KEEP_GENERATIONS = 1
RETIRED_MIN_AGE_S = 60.0
PAUSE_ENV = "MGVR_TEST_PAUSE_BEFORE_COMMIT"
PAUSE_S = 600.0
log = logging.getLogger(__name__)
CatalogEdit = Callable[[Catalog], None]


class Commit:
    """Collects one generation's worth of changes; `apply()` makes them current atomically.

    Use as a context manager: leaving the block by an exception aborts (deletes what was
    written for this commit); the caller calls `apply()` inside the block when done.
    """

    def __init__(self, layout: IndexLayout, catalog: Catalog) -> None:
        self.layout = layout
        self.catalog = catalog
        self._written: list[Path] = []  # by this commit: deleted if it aborts
        self._adopted: list[Path] = []  # already on disk before it: never deleted here
        self._replaced: list[Path] = []  # rebuilt in place of a damaged file (a sidecar)
        self._parts: list[tuple[str, int]] = []
        self._segments: list[SegmentRecord] = []
        self._retired_parts: list[str] = []
        self._retired_segments: list[str] = []
        self._edits: list[CatalogEdit] = []
        self._open: list[FinePartWriter] = []
        self._next = {kind: self._first_free(kind) for kind in ("part", "segment")}
        self.applied: int | None = None

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.applied is None:
            self.abort()

    def _first_free(self, kind: str) -> int:
        """Above the catalog's counter and above any file on disk (a killed run's leftovers
        are removed before writing, but never reuse a name that might still be read)."""
        on_disk = self.layout.numbered_files(kind)
        return max([self.catalog.next_number(kind), *(n + 1 for n in on_disk)])

    def _reserve(self, kind: str) -> int:
        number = self._next[kind]
        self._next[kind] = number + 1
        return number

    # fine parts -----------------------------------------------------------------------------
    def new_part(self, metadata: dict[str, object]) -> tuple[str, FinePartWriter]:
        """A writer for a new part (named now, registered when closed with `add_part`)."""
        name = self.layout.part_name(self._reserve("part"))
        writer = FinePartWriter(self.layout.fine_part(name),
                                {**metadata, "catalog_id": self.catalog.catalog_id()})
        self._open.append(writer)
        return name, writer

    def add_part(self, name: str, writer: FinePartWriter) -> None:
        """Close a part made by `new_part` and make it part of this commit."""
        writer.close()
        self._open.remove(writer)
        self._written += writer.files
        self._parts.append((name, writer.rows))

    def adopt_part(self, name: str, rows: int) -> None:
        """Register a closed part already on disk (a catalog rebuilt from its parts)."""
        self._adopted += [p for p in self.layout.part_files(name) if p.is_file()]
        self._parts.append((name, rows))

    def replace_file(self, path: Path) -> None:
        """Register a file rebuilt in place of a damaged one (same name, new checksum)."""
        self._replaced.append(path)

    def retire_part(self, name: str) -> None:
        self._retired_parts.append(name)

    # coarse segments ------------------------------------------------------------------------
    def add_segment(self, ids: np.ndarray, vectors: np.ndarray,
                    kind: str | None = None) -> SegmentRecord:
        """Build and write a segment over (N,) ids and (N, D) vectors for this commit."""
        name = self.layout.segment_name(self._reserve("segment"))
        index, layout = build_segment(ids, vectors, kind)
        path = self.layout.segment(name)
        self._written.append(path)  # before writing: an abort removes a half-written file
        write_segment(index, path)
        record = SegmentRecord(name, layout.kind, layout.rows, layout.nlist, layout.nprobe,
                               layout.ef_search)
        self._segments.append(record)
        return record

    def add_flat_segments(self, ids: np.ndarray, vectors_of: Callable[[slice], np.ndarray]
                          ) -> list[tuple[np.ndarray, str]]:
        """Exact segments of fewer than FLAT_MAX_ROWS clips over (N,) `ids`, the vectors read a
        chunk at a time (`vectors_of(positions)`), so a repair or a rebuild holds one chunk in
        memory at any size; a later merge builds the large layout. Returns (ids, segment name)
        per segment."""
        made = []
        for start in range(0, len(ids), FLAT_MAX_ROWS - 1):
            chunk = slice(start, start + FLAT_MAX_ROWS - 1)
            record = self.add_segment(ids[chunk], vectors_of(chunk), kind="flat")
            made.append((ids[chunk], record.name))
        return made

    def retire_segment(self, name: str) -> None:
        self._retired_segments.append(name)

    # the catalog ----------------------------------------------------------------------------
    def change(self, edit: CatalogEdit) -> None:
        """A catalog edit to run inside the commit's transaction (after new parts and segments
        are registered, before retired ones are removed)."""
        self._edits.append(edit)

    def pending(self) -> bool:
        return bool(self._parts or self._segments or self._edits or self._retired_parts
                    or self._retired_segments or self._replaced)

    def apply(self) -> int:
        """Make everything current as the next generation; returns its number."""
        for writer in list(self._open):
            writer.abort()
        self._open.clear()
        registered = self._written + self._adopted
        sums = [(self.layout.relative(path), path.stat().st_size, sha256_file(path))
                for path in registered]
        rebuilt = [(self.layout.relative(path), path.stat().st_size, sha256_file(path))
                   for path in self._replaced]
        for folder in {path.parent for path in registered + self._replaced}:
            fsync_directory(folder)
        generation = self.catalog.generation() + 1
        _pause_for_crash_tests(generation)
        with self.catalog.transaction():
            for name, size, sha in sums:
                self.catalog.add_file(name, size, sha)
            for name, size, sha in rebuilt:
                self.catalog.replace_file(name, size, sha)
            for name, rows in self._parts:
                self.catalog.add_part(name, rows)
            for record in self._segments:
                self.catalog.add_segment(record)
            for edit in self._edits:
                edit(self.catalog)
            self.catalog.remove_segments(self._retired_segments)
            self.catalog.remove_parts(self._retired_parts)
            for name in self._retired_files():
                self.catalog.retire_file(name, generation)
            for kind, number in self._next.items():
                self.catalog.set_next_number(kind, number)
            self.catalog.set_generation(generation)
        self.applied = generation
        try:
            delete_retired(self.layout, self.catalog)
        except (OSError, sqlite3.Error) as e:  # committed all the same: the next commit retries
            log.warning("%s: retired files not deleted yet (%s)", self.layout.root, e)
        return generation

    def _retired_files(self) -> list[str]:
        names = [self.layout.relative(self.layout.segment(s)) for s in self._retired_segments]
        for part in self._retired_parts:
            names += [self.layout.relative(p) for p in self.layout.part_files(part)]
        return names

    def abort(self) -> None:
        """Delete what this commit wrote; the catalog is untouched. Nothing to do once the
        commit is applied: its files are the index now."""
        if self.applied is not None:
            return
        for writer in self._open:
            with contextlib.suppress(Exception):
                writer.abort()
        self._open.clear()
        for path in self._written:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        self._written.clear()


def delete_retired(layout: IndexLayout, catalog: Catalog) -> None:
    """Delete retired files that no reader can still need: retired KEEP_GENERATIONS
    generations ago and at least RETIRED_MIN_AGE_S ago (a compaction or a run's merges make
    several commits within milliseconds, and a reader may have just read the catalog)."""
    current, now = catalog.generation(), time.time()
    due = [name for name, (generation, at) in catalog.retired().items()
           if generation + KEEP_GENERATIONS <= current and now - at >= RETIRED_MIN_AGE_S]
    if not due:
        return
    for name in due:
        (layout.root / name).unlink(missing_ok=True)
    with catalog.transaction():
        catalog.forget_files(due)


def _pause_for_crash_tests(generation: int) -> None:
    """With $MGVR_TEST_PAUSE_BEFORE_COMMIT set, say so and wait to be killed: every file of
    the commit is written and fsynced, the catalog not yet changed. Crash tests kill here, a
    moment no sleep could hit reliably."""
    if os.environ.get(PAUSE_ENV):
        print(f"mgvr: paused before commit {generation}", file=sys.stderr, flush=True)
        time.sleep(PAUSE_S)


def fsync_directory(folder: Path) -> None:
    """Make the renames into `folder` durable before the catalog names the files."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

