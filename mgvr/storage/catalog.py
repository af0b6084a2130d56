"""The SQLite catalog: videos, clips, fine-store parts, runs and the current generation.

All SQL of mgvr lives here. A writer stages a batch of changes and applies them in one
transaction together with the new generation number, so readers always see a catalog that
matches one complete FAISS generation and a set of closed Parquet parts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'failed')),
    reason TEXT,
    error TEXT,
    duration_s REAL,
    width INTEGER,
    height INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    clip_index INTEGER NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    n_frames INTEGER NOT NULL,
    part TEXT NOT NULL REFERENCES parts(name),
    row INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_by_video ON clips(video_id);
CREATE TABLE IF NOT EXISTS parts (
    name TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS videos_by_content ON videos(content_key);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    indexed INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    moved INTEGER NOT NULL DEFAULT 0,
    deferred INTEGER NOT NULL DEFAULT 0,
    clips_added INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class RunRecord:
    id: int
    root: str
    pid: int
    started_at: float
    finished_at: float | None  # None: still running, or killed
    indexed: int
    unchanged: int
    failed: int
    removed: int
    moved: int
    deferred: int
    clips_added: int


@dataclass(frozen=True)
class VideoRecord:
    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    reason: str | None
    content_key: str | None


@dataclass(frozen=True)
class ClipRecord:
    id: int
    video_path: str
    clip_index: int
    start_s: float
    end_s: float
    n_frames: int
    part: str
    row: int


@dataclass(frozen=True)
class NewClip:
    """A clip row to insert; its id was reserved with `reserve_clip_ids`."""

    id: int
    clip_index: int
    start_s: float
    end_s: float
    n_frames: int
    part: str
    row: int


@dataclass(frozen=True)
class VideoUpdate:
    """The outcome for one file: indexed with clips, or failed with a reason."""

    path: str
    size: int
    mtime_ns: int
    status: str
    clips: tuple[NewClip, ...] = ()
    content_key: str | None = None
    reason: str | None = None
    error: str | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None


class Catalog:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                        check_same_thread=False)
        else:
            self.conn = sqlite3.connect(path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
        self.conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn

    # meta -----------------------------------------------------------------------------------
    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                          "DO UPDATE SET value = excluded.value", (key, str(value)))

    def generation(self) -> int:
        """The committed FAISS generation; 0 means nothing committed yet."""
        return self._meta("generation", 0)

    def next_clip_id(self) -> int:
        """First clip id never handed out; ids of removed clips are not reused."""
        return self._meta("next_clip_id", 1)

    def next_part_number(self) -> int:
        return self._meta("next_part_number", 1)

    # reads ----------------------------------------------------------------------------------
    def videos_under(self, root: str) -> dict[str, VideoRecord]:
        """Every recorded file whose path lies under the folder `root` (absolute)."""
        prefix = root.rstrip("/") + "/"
        rows = self.conn.execute(
            "SELECT id, path, size, mtime_ns, status, reason, content_key FROM videos "
            "WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        return {row[1]: VideoRecord(*row) for row in rows}

    def clip_ids_of(self, path: str) -> list[int] | None:
        """Clip ids of a recorded file; None when the file is not in the catalog."""
        video = self.conn.execute("SELECT id FROM videos WHERE path = ?", (path,)).fetchone()
        if video is None:
            return None
        rows = self.conn.execute("SELECT id FROM clips WHERE video_id = ?", (video[0],))
        return [row[0] for row in rows]

    def clips_by_ids(self, clip_ids: Iterable[int]) -> dict[int, ClipRecord]:
        ids = list(clip_ids)
        found: dict[int, ClipRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.conn.execute(
                "SELECT c.id, v.path, c.clip_index, c.start_s, c.end_s, c.n_frames, c.part, c.row "
                "FROM clips c JOIN videos v ON v.id = c.video_id "
                f"WHERE c.id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((row[0], ClipRecord(*row)) for row in rows)
        return found

    def clip_ids_matching(self, under: str | None = None, name: str | None = None,
                          modified_after_ns: int | None = None,
                          modified_before_ns: int | None = None) -> np.ndarray:
        """Sorted int64 ids of the clips whose video matches every condition given: its path
        is `under` or lies below that folder (absolute), its file name contains `name`
        (case-insensitive), its mtime is at or after `modified_after_ns` and before
        `modified_before_ns`."""
        conditions, values = [], []
        if under is not None:
            folder = under.rstrip("/") + "/"
            conditions.append("(v.path = ? OR substr(v.path, 1, ?) = ?)")
            values += [under, len(folder), folder]
        if name is not None:
            # The file name is the path less its folder: rtrim strips every character but
            # '/' from the end, which leaves the folder.
            conditions.append("instr(casefold(replace(v.path, rtrim(v.path, "
                              "replace(v.path, '/', '')), '')), ?) > 0")
            values.append(name.casefold())
        if modified_after_ns is not None:
            conditions.append("v.mtime_ns >= ?")
            values.append(modified_after_ns)
        if modified_before_ns is not None:
            conditions.append("v.mtime_ns < ?")
            values.append(modified_before_ns)
        self.conn.create_function("casefold", 1, str.casefold, deterministic=True)
        rows = self.conn.execute(
            "SELECT c.id FROM clips c JOIN videos v ON v.id = c.video_id"
            + "".join(f" {'WHERE' if i == 0 else 'AND'} {c}" for i, c in enumerate(conditions))
            + " ORDER BY c.id", values)
        return np.fromiter((row[0] for row in rows), np.int64)

    def all_clip_ids(self) -> list[int]:
        return [row[0] for row in self.conn.execute("SELECT id FROM clips ORDER BY id")]

    def part_names(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT name FROM parts")}

    def counts(self) -> dict[str, int]:
        def scalar(sql: str) -> int:
            return int(self.conn.execute(sql).fetchone()[0])

        return {
            "videos_indexed": scalar("SELECT count(*) FROM videos WHERE status = 'indexed'"),
            "videos_failed": scalar("SELECT count(*) FROM videos WHERE status = 'failed'"),
            "clips": scalar("SELECT count(*) FROM clips"),
            "parts": scalar("SELECT count(*) FROM parts"),
        }

    def failures(self) -> list[tuple[str, str, str]]:
        """(path, reason, detail) of every file that could not be indexed."""
        rows = self.conn.execute("SELECT path, reason, error FROM videos "
                                 "WHERE status = 'failed' ORDER BY path")
        return [tuple(row) for row in rows]

    # writes (call inside `transaction()`) ---------------------------------------------------
    def set_next_clip_id(self, next_clip_id: int) -> None:
        self._set_meta("next_clip_id", next_clip_id)

    def add_part(self, name: str, rows: int) -> None:
        self.conn.execute("INSERT INTO parts(name, rows, created_at) VALUES (?, ?, ?)",
                          (name, rows, time.time()))
        self._set_meta("next_part_number", self.next_part_number() + 1)

    def set_generation(self, generation: int) -> None:
        self._set_meta("generation", generation)

    def remove_video(self, path: str) -> list[int]:
        """Forget a file and its clips; returns the clip ids that must leave the coarse index."""
        clip_ids = self.clip_ids_of(path)
        self.conn.execute("DELETE FROM videos WHERE path = ?", (path,))
        return clip_ids or []

    def apply(self, update: VideoUpdate) -> None:
        """Insert or replace one file's record and its clips (old clips must be removed first)."""
        cursor = self.conn.execute(
            "INSERT INTO videos(path, size, mtime_ns, content_key, status, reason, error, "
            "duration_s, width, height, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (update.path, update.size, update.mtime_ns, update.content_key, update.status,
             update.reason, update.error, update.duration_s, update.width, update.height,
             time.time()))
        video_id = cursor.fetchone()[0]
        self.conn.executemany(
            "INSERT INTO clips(id, video_id, clip_index, start_s, end_s, n_frames, part, row) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(c.id, video_id, c.clip_index, c.start_s, c.end_s, c.n_frames, c.part, c.row)
             for c in update.clips])

    def move_video(self, old_path: str, new_path: str, size: int, mtime_ns: int) -> None:
        """A renamed or moved file: keep its clips, point the record at the new path."""
        self.conn.execute("UPDATE videos SET path = ?, size = ?, mtime_ns = ?, updated_at = ? "
                          "WHERE path = ?", (new_path, size, mtime_ns, time.time(), old_path))

    def delete_clips(self, clip_ids: list[int]) -> None:
        self.conn.executemany("DELETE FROM clips WHERE id = ?", [(i,) for i in clip_ids])

    def forget_videos_without_clips(self, paths: list[str]) -> None:
        self.conn.executemany("DELETE FROM videos WHERE path = ? AND status = 'indexed' AND "
                              "NOT EXISTS (SELECT 1 FROM clips WHERE clips.video_id = videos.id)",
                              [(p,) for p in paths])

    def relocate_clips(self, moves: list[tuple[int, str, int]]) -> None:
        """(clip_id, part, row) for clips whose fine rows were rewritten elsewhere."""
        self.conn.executemany("UPDATE clips SET part = ?, row = ? WHERE id = ?",
                              [(part, row, clip_id) for clip_id, part, row in moves])

    def remove_parts(self, names: list[str]) -> None:
        self.conn.executemany("DELETE FROM parts WHERE name = ?", [(n,) for n in names])

    def clip_locations(self) -> list[tuple[int, str, int, int, str]]:
        """Every live clip: (clip_id, part, row, n_frames, video path), by clip id."""
        rows = self.conn.execute("SELECT c.id, c.part, c.row, c.n_frames, v.path FROM clips c "
                                 "JOIN videos v ON v.id = c.video_id ORDER BY c.id")
        return [tuple(row) for row in rows]

    def parts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, rows FROM parts"))

    def integrity_problems(self) -> list[str]:
        rows = [row[0] for row in self.conn.execute("PRAGMA integrity_check")]
        rows += [f"foreign key violation in {row[0]}" for row in
                 self.conn.execute("PRAGMA foreign_key_check")]
        return [row for row in rows if row != "ok"]

    def start_run(self, root: str, pid: int) -> int:
        with self.transaction():
            cursor = self.conn.execute("INSERT INTO runs(root, pid, started_at) VALUES (?, ?, ?)",
                                       (root, pid, time.time()))
            return int(cursor.lastrowid)

    def finish_run(self, run_id: int, **counts: int) -> None:
        columns = ("indexed", "unchanged", "failed", "removed", "moved", "deferred",
                   "clips_added")
        with self.transaction():
            self.conn.execute(
                f"UPDATE runs SET finished_at = ?, {', '.join(f'{c} = ?' for c in columns)} "
                "WHERE id = ?", (time.time(), *(counts.get(c, 0) for c in columns), run_id))

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        rows = self.conn.execute(
            "SELECT id, root, pid, started_at, finished_at, indexed, unchanged, failed, removed, "
            "moved, deferred, clips_added FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [RunRecord(*row) for row in rows]
