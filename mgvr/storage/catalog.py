"""The SQLite catalog: videos, clips, fine-store parts, coarse segments, file checksums, runs and
the current generation.

All SQL of mgvr lives here. A commit (`storage.commit.Commit`) applies its changes in one
transaction together with the new generation number, so readers always see a catalog that
names one complete set of closed Parquet parts and FAISS segments.

Paths are stored as the bytes the file system gave (BLOB), so a file name that is not valid
UTF-8 round-trips exactly; Python sees them as `os.fsdecode` strings (surrogate escapes).

The database uses a rollback journal, not WAL: a reader then needs nothing but read access to
`catalog.sqlite`, so search, status and verify work on a read-only copy or mount.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mgvr.errors import IndexDamagedError, ReadOnlyIndexError

CATALOG_FORMAT = "2"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'failed', 'missing')),
    reason TEXT,
    error TEXT,
    duration_s REAL,
    width INTEGER,
    height INTEGER,
    missing_since REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX videos_by_content ON videos(content_key);
CREATE TABLE parts (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE segments (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    rows INTEGER NOT NULL,
    nlist INTEGER,
    nprobe INTEGER,
    ef_search INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE clips (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    clip_index INTEGER NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    n_frames INTEGER NOT NULL,
    part TEXT NOT NULL REFERENCES parts(name),
    row INTEGER NOT NULL,
    segment TEXT NOT NULL REFERENCES segments(name)
);
CREATE INDEX clips_by_video ON clips(video_id);
CREATE INDEX clips_by_part ON clips(part);
CREATE INDEX clips_by_segment ON clips(segment);
-- Clips removed from the catalog whose vectors still sit in an immutable segment: searches
-- exclude them inside FAISS; a merge that rewrites the segment drops them.
CREATE TABLE tombstones (
    clip_id INTEGER PRIMARY KEY,
    segment TEXT NOT NULL REFERENCES segments(name)
);
-- Every immutable file of the index (parts, sidecars, segments) with its checksum.
CREATE TABLE files (name TEXT PRIMARY KEY, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL);
-- Files the current generation no longer names, kept for readers of older generations until
-- `generation` is old enough (see storage.commit.KEEP_GENERATIONS).
CREATE TABLE retired (name TEXT PRIMARY KEY, generation INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    root BLOB,
    pid INTEGER NOT NULL,
    mode TEXT NOT NULL DEFAULT 'local',
    workers INTEGER,
    gpus INTEGER,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL DEFAULT 'running',
    error TEXT,
    indexed INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0,
    moved INTEGER NOT NULL DEFAULT 0,
    deferred INTEGER NOT NULL DEFAULT 0,
    clips_added INTEGER NOT NULL DEFAULT 0
);
"""
RUN_COUNTS = ("indexed", "unchanged", "failed", "removed", "missing", "moved", "deferred",
              "clips_added")
_SQL_CHUNK = 500  # ids per IN (...) list


def path_key(path: str) -> bytes:
    """How a path is stored: the file system's own bytes."""
    return os.fsencode(path)


def path_of(key: bytes | str) -> str:
    return os.fsdecode(key)


@dataclass(frozen=True)
class RunRecord:
    id: int
    command: str
    root: str | None
    pid: int
    mode: str
    workers: int | None
    gpus: int | None
    started_at: float
    finished_at: float | None
    status: str  # running (or killed: finished_at stays None), finished, failed
    error: str | None
    indexed: int
    unchanged: int
    failed: int
    removed: int
    missing: int
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
    missing_since: float | None = None


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
class ClipLocation:
    """Where a live clip's data lives: its fine row and its coarse segment."""

    clip_id: int
    part: str
    row: int
    n_frames: int
    segment: str
    video_path: str


@dataclass(frozen=True)
class NewClip:
    """A clip row to insert; its id was reserved from `next_clip_id`."""

    id: int
    clip_index: int
    start_s: float
    end_s: float
    n_frames: int
    part: str
    row: int
    segment: str


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


@dataclass(frozen=True)
class SegmentRecord:
    name: str
    kind: str  # flat, ivf-flat, ivf-sq8
    rows: int
    nlist: int | None
    nprobe: int | None
    ef_search: int | None


def _damaged(path: Path, what: str) -> IndexDamagedError:
    return IndexDamagedError(
        f"{path}: {what}; the index's data may still be whole: run `mgvr verify --repair` to "
        "rebuild the catalog from the Parquet parts")


class Catalog:
    """A connection to an existing catalog (`create` makes a new one)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise _damaged(self.path, "the catalog is missing")
        if self.path.stat().st_size == 0:
            raise _damaged(self.path, "the catalog is an empty file")
        # Readers open read-write too, and only read: SQLite then rolls back the journal a
        # writer killed mid-commit left behind (a read-only connection cannot, and fails), and
        # on a write-protected file it opens read-only by itself.
        uri = f"file:{self.path}?mode=rw"
        try:
            self.conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            self.conn.execute("PRAGMA foreign_keys=ON")
            found = self.conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e):
                raise _damaged(self.path, f"not a readable mgvr catalog ({e})") from e
            raise ReadOnlyIndexError(
                f"{self.path}: a writer was killed mid-commit and left {self.path.name}-journal, "
                "which only a user who can write the index can roll back: run `mgvr status` as "
                "such a user once") from e
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, f"not a readable mgvr catalog ({e})") from e
        if found is None or found[0] != CATALOG_FORMAT:
            self.conn.close()
            raise _damaged(self.path, f"catalog format {found and found[0]} is not the format "
                                      f"{CATALOG_FORMAT} this mgvr writes")

    @classmethod
    def create(cls, path: Path) -> Catalog:
        """A new, empty catalog (written to a temporary name first: a half-made catalog is
        never mistaken for a damaged one)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript(SCHEMA)
            with conn:
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                                 [("format", CATALOG_FORMAT), ("catalog_id", uuid.uuid4().hex)])
        finally:
            conn.close()
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees one committed state."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    # meta -----------------------------------------------------------------------------------
    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                          "DO UPDATE SET value = excluded.value", (key, str(value)))

    def catalog_id(self) -> str:
        """A random id made with the catalog; parts written for it carry it in their metadata,
        so an unregistered part is known to be this catalog's own leftover (safe to delete)
        or data of an earlier catalog (kept for `mgvr verify --repair`)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_id'").fetchone()
        return row[0]

    def generation(self) -> int:
        """The committed generation; 0 means nothing committed yet."""
        return self._meta("generation", 0)

    def next_clip_id(self) -> int:
        """First clip id never handed out; ids of removed clips are not reused."""
        return self._meta("next_clip_id", 1)

    def next_number(self, kind: str) -> int:
        """Next number for a new file of `kind` ('part' or 'segment')."""
        return self._meta(f"next_{kind}_number", 1)

    # reads: videos --------------------------------------------------------------------------
    def videos_under(self, root: str) -> dict[str, VideoRecord]:
        """Every recorded file whose path lies under the folder `root` (absolute)."""
        prefix = path_key(root.rstrip("/") + "/")
        rows = self.conn.execute(
            "SELECT id, path, size, mtime_ns, status, reason, content_key, missing_since "
            "FROM videos WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))
        return {path_of(row[1]): VideoRecord(row[0], path_of(row[1]), *row[2:]) for row in rows}

    def video_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM videos").fetchone()[0])

    def clip_ids_of(self, path: str) -> list[int] | None:
        """Clip ids of a recorded file; None when the file is not in the catalog."""
        video = self.conn.execute("SELECT id FROM videos WHERE path = ?",
                                  (path_key(path),)).fetchone()
        if video is None:
            return None
        return [row[0] for row in self.conn.execute(
            "SELECT id FROM clips WHERE video_id = ? ORDER BY id", (video[0],))]

    def failures(self) -> list[tuple[str, str, str]]:
        """(path, reason, detail) of every file that could not be indexed."""
        rows = self.conn.execute("SELECT path, reason, error FROM videos "
                                 "WHERE status = 'failed' ORDER BY path")
        return [(path_of(path), reason, error) for path, reason, error in rows]

    def missing(self) -> list[tuple[str, float]]:
        """(path, missing since) of indexed files that were not found by recent runs."""
        rows = self.conn.execute("SELECT path, missing_since FROM videos "
                                 "WHERE status = 'missing' ORDER BY path")
        return [(path_of(path), since) for path, since in rows]

    # reads: clips ---------------------------------------------------------------------------
    def clips_by_ids(self, clip_ids: Iterable[int]) -> dict[int, ClipRecord]:
        ids = list(clip_ids)
        found: dict[int, ClipRecord] = {}
        for start in range(0, len(ids), _SQL_CHUNK):
            chunk = ids[start:start + _SQL_CHUNK]
            rows = self.conn.execute(
                "SELECT c.id, v.path, c.clip_index, c.start_s, c.end_s, c.n_frames, c.part, c.row "
                "FROM clips c JOIN videos v ON v.id = c.video_id "
                f"WHERE c.id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((row[0], ClipRecord(row[0], path_of(row[1]), *row[2:])) for row in rows)
        return found

    def clip_ids_matching(self, under: str | None = None, name: str | None = None,
                          modified_after_ns: int | None = None,
                          modified_before_ns: int | None = None) -> list[int]:
        """Sorted ids of the clips whose video matches every condition given: its path
        is `under` or lies below that folder (absolute), its file name contains `name`
        (case-insensitive), its mtime is at or after `modified_after_ns` and before
        `modified_before_ns`."""
        conditions, values = [], []
        if under is not None:
            folder = path_key(under.rstrip("/") + "/")
            conditions.append("(v.path = ? OR substr(v.path, 1, ?) = ?)")
            values += [path_key(under), len(folder), folder]
        if name is not None:
            conditions.append("file_name_contains(v.path, ?)")
            values.append(name.casefold())
        if modified_after_ns is not None:
            conditions.append("v.mtime_ns >= ?")
            values.append(modified_after_ns)
        if modified_before_ns is not None:
            conditions.append("v.mtime_ns < ?")
            values.append(modified_before_ns)
        self.conn.create_function(
            "file_name_contains", 2, deterministic=True,
            func=lambda path, text: text in os.path.basename(path_of(path)).casefold())
        rows = self.conn.execute(
            "SELECT c.id FROM clips c JOIN videos v ON v.id = c.video_id"
            + "".join(f" {'WHERE' if i == 0 else 'AND'} {c}" for i, c in enumerate(conditions))
            + " ORDER BY c.id", values)
        return [row[0] for row in rows]

    def all_clip_ids(self) -> list[int]:
        return [row[0] for row in self.conn.execute("SELECT id FROM clips ORDER BY id")]

    def clip_locations(self, part: str | None = None,
                       segments: Iterable[str] | None = None) -> Iterator[ClipLocation]:
        """Live clips by clip id: all, those of one part, or those of some segments."""
        sql = ("SELECT c.id, c.part, c.row, c.n_frames, c.segment, v.path FROM clips c "
               "JOIN videos v ON v.id = c.video_id")
        args: list[object] = []
        if part is not None:
            sql += " WHERE c.part = ?"
            args.append(part)
        elif segments is not None:
            names = list(segments)
            sql += f" WHERE c.segment IN ({','.join('?' * len(names))})"
            args += names
        for row in self.conn.execute(sql + " ORDER BY c.id", args):
            yield ClipLocation(*row[:5], path_of(row[5]))

    def clips_of_videos(self, paths: Iterable[str]) -> Iterator[tuple[str, ClipRecord]]:
        """(path, clip) of the given files' clips, for copying them into a new part."""
        for path in paths:
            for row in self.conn.execute(
                    "SELECT c.id, v.path, c.clip_index, c.start_s, c.end_s, c.n_frames, c.part, "
                    "c.row FROM clips c JOIN videos v ON v.id = c.video_id WHERE v.path = ? "
                    "ORDER BY c.clip_index", (path_key(path),)):
                yield path, ClipRecord(row[0], path_of(row[1]), *row[2:])

    def video_of_clip(self, clip_id: int) -> dict[str, object] | None:
        """The file behind a clip, with what a reader needs to decide whether to serve it."""
        row = self.conn.execute(
            "SELECT v.path, v.size, v.mtime_ns, v.status, v.duration_s, v.width, v.height "
            "FROM clips c JOIN videos v ON v.id = c.video_id WHERE c.id = ?",
            (clip_id,)).fetchone()
        if row is None:
            return None
        return {"path": path_of(row[0]), "size": row[1], "mtime_ns": row[2], "status": row[3],
                "duration_s": row[4], "width": row[5], "height": row[6]}

    def counts(self) -> dict[str, int]:
        def scalar(sql: str) -> int:
            return int(self.conn.execute(sql).fetchone()[0])

        return {
            "videos_indexed": scalar("SELECT count(*) FROM videos WHERE status = 'indexed'"),
            "videos_missing": scalar("SELECT count(*) FROM videos WHERE status = 'missing'"),
            "videos_failed": scalar("SELECT count(*) FROM videos WHERE status = 'failed'"),
            "clips": scalar("SELECT count(*) FROM clips"),
            "parts": scalar("SELECT count(*) FROM parts"),
            "segments": scalar("SELECT count(*) FROM segments"),
            "tombstones": scalar("SELECT count(*) FROM tombstones"),
        }

    # reads: parts, segments, files ----------------------------------------------------------
    def parts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, rows FROM parts ORDER BY name"))

    def live_rows_per_part(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT part, count(*) FROM clips GROUP BY part"))

    def segments(self) -> list[SegmentRecord]:
        rows = self.conn.execute("SELECT name, kind, rows, nlist, nprobe, ef_search FROM segments "
                                 "ORDER BY name")
        return [SegmentRecord(*row) for row in rows]

    def tombstones(self, segment: str | None = None) -> list[int]:
        if segment is None:
            rows = self.conn.execute("SELECT clip_id FROM tombstones ORDER BY clip_id")
        else:
            rows = self.conn.execute("SELECT clip_id FROM tombstones WHERE segment = ? "
                                     "ORDER BY clip_id", (segment,))
        return [row[0] for row in rows]

    def dead_per_segment(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT segment, count(*) FROM tombstones GROUP BY segment"))

    def files(self) -> dict[str, tuple[int, str]]:
        """name -> (bytes, sha256) of every immutable file the catalog knows, retired included."""
        return {name: (size, sha) for name, size, sha in
                self.conn.execute("SELECT name, bytes, sha256 FROM files")}

    def retired(self) -> dict[str, tuple[int, float]]:
        """name -> (generation that retired it, when)."""
        return {name: (generation, at) for name, generation, at in
                self.conn.execute("SELECT name, generation, at FROM retired")}

    def integrity_problems(self) -> list[str]:
        rows = [row[0] for row in self.conn.execute("PRAGMA integrity_check")]
        rows += [f"foreign key violation in {row[0]}" for row in
                 self.conn.execute("PRAGMA foreign_key_check")]
        return [row for row in rows if row != "ok"]

    # writes (call inside `transaction()`) ---------------------------------------------------
    def set_generation(self, generation: int) -> None:
        self._set_meta("generation", generation)

    def set_next_clip_id(self, next_clip_id: int) -> None:
        self._set_meta("next_clip_id", next_clip_id)

    def set_next_number(self, kind: str, number: int) -> None:
        self._set_meta(f"next_{kind}_number", number)

    def add_file(self, name: str, size: int, sha256: str) -> None:
        self.conn.execute("INSERT INTO files(name, bytes, sha256) VALUES (?, ?, ?)",
                          (name, size, sha256))

    def replace_file(self, name: str, size: int, sha256: str) -> None:
        """A rebuilt copy of a damaged file (a sidecar rebuilt from its Parquet part)."""
        self.conn.execute("INSERT INTO files(name, bytes, sha256) VALUES (?, ?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET bytes = excluded.bytes, "
                          "sha256 = excluded.sha256", (name, size, sha256))

    def retire_file(self, name: str, generation: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO retired(name, generation, at) VALUES (?, ?, ?)",
                          (name, generation, time.time()))

    def forget_files(self, names: Iterable[str]) -> None:
        names = list(names)
        self.conn.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in names])
        self.conn.executemany("DELETE FROM retired WHERE name = ?", [(n,) for n in names])

    def add_part(self, name: str, rows: int) -> None:
        self.conn.execute("INSERT INTO parts(name, rows, created_at) VALUES (?, ?, ?)",
                          (name, rows, time.time()))

    def remove_parts(self, names: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM parts WHERE name = ?", [(n,) for n in names])

    def add_segment(self, record: SegmentRecord) -> None:
        self.conn.execute("INSERT INTO segments(name, kind, rows, nlist, nprobe, ef_search, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (record.name, record.kind, record.rows, record.nlist, record.nprobe,
                           record.ef_search, time.time()))

    def remove_segments(self, names: Iterable[str]) -> None:
        """Segments replaced by a merge or a rebuild: their tombstones go with them (the clips
        still live must have been assigned to the new segment first)."""
        names = list(names)
        self.conn.executemany("DELETE FROM tombstones WHERE segment = ?", [(n,) for n in names])
        self.conn.executemany("DELETE FROM segments WHERE name = ?", [(n,) for n in names])

    def assign_segment(self, clip_ids: Iterable[int], segment: str) -> None:
        self.conn.executemany("UPDATE clips SET segment = ? WHERE id = ?",
                              [(segment, int(i)) for i in clip_ids])

    def add_tombstones(self, clip_ids: Iterable[int], segment: str) -> None:
        """Vectors in `segment` of clips the catalog no longer holds (found by verify)."""
        self.conn.executemany("INSERT OR IGNORE INTO tombstones(clip_id, segment) VALUES (?, ?)",
                              [(int(i), segment) for i in clip_ids])

    def remove_video(self, path: str) -> list[int]:
        """Forget a file; its clips become tombstones of their segments. Returns their ids."""
        key = path_key(path)
        clips = self.conn.execute(
            "SELECT c.id, c.segment FROM clips c JOIN videos v ON v.id = c.video_id "
            "WHERE v.path = ?", (key,)).fetchall()
        self.conn.executemany("INSERT INTO tombstones(clip_id, segment) VALUES (?, ?)", clips)
        self.conn.execute("DELETE FROM videos WHERE path = ?", (key,))
        return [clip_id for clip_id, _ in clips]

    def apply(self, update: VideoUpdate) -> None:
        """Insert one file's record and its clips (an old record must be removed first)."""
        cursor = self.conn.execute(
            "INSERT INTO videos(path, size, mtime_ns, content_key, status, reason, error, "
            "duration_s, width, height, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (path_key(update.path), update.size, update.mtime_ns, update.content_key,
             update.status, update.reason, update.error, update.duration_s, update.width,
             update.height, time.time()))
        video_id = cursor.fetchone()[0]
        self.conn.executemany(
            "INSERT INTO clips(id, video_id, clip_index, start_s, end_s, n_frames, part, row, "
            "segment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(c.id, video_id, c.clip_index, c.start_s, c.end_s, c.n_frames, c.part, c.row,
              c.segment) for c in update.clips])

    def move_video(self, old_path: str, new_path: str, size: int, mtime_ns: int) -> None:
        """A renamed or moved file (or one back from missing): keep its clips, point the
        record at the new path."""
        self.conn.execute("UPDATE videos SET path = ?, size = ?, mtime_ns = ?, status = "
                          "'indexed', missing_since = NULL, updated_at = ? WHERE path = ?",
                          (path_key(new_path), size, mtime_ns, time.time(), path_key(old_path)))

    def mark_missing(self, paths: Iterable[str], since: float) -> None:
        self.conn.executemany("UPDATE videos SET status = 'missing', missing_since = ? "
                              "WHERE path = ? AND status = 'indexed'",
                              [(since, path_key(p)) for p in paths])

    def relocate_clips(self, moves: list[tuple[int, str, int]]) -> None:
        """(clip_id, part, row) for clips whose fine rows were rewritten elsewhere."""
        self.conn.executemany("UPDATE clips SET part = ?, row = ? WHERE id = ?",
                              [(part, row, clip_id) for clip_id, part, row in moves])

    # runs -----------------------------------------------------------------------------------
    def start_run(self, command: str, root: str | None, pid: int, mode: str = "local",
                  workers: int | None = None, gpus: int | None = None) -> int:
        with self.transaction():
            cursor = self.conn.execute(
                "INSERT INTO runs(command, root, pid, mode, workers, gpus, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (command, root and path_key(root), pid, mode, workers, gpus, time.time()))
            return int(cursor.lastrowid)

    def set_run_cluster(self, run_id: int, mode: str, workers: int | None,
                        gpus: int | None) -> None:
        """How a run runs, once it knows (a Ray run joins its cluster after it is recorded)."""
        with self.transaction():
            self.conn.execute("UPDATE runs SET mode = ?, workers = ?, gpus = ? WHERE id = ?",
                              (mode, workers, gpus, run_id))

    def finish_run(self, run_id: int, status: str = "finished", error: str | None = None,
                   **counts: int) -> None:
        with self.transaction():
            self.conn.execute(
                f"UPDATE runs SET finished_at = ?, status = ?, error = ?, "
                f"{', '.join(f'{c} = ?' for c in RUN_COUNTS)} WHERE id = ?",
                (time.time(), status, error, *(counts.get(c, 0) for c in RUN_COUNTS), run_id))

    def recent_runs(self, limit: int = 10) -> list[RunRecord]:
        rows = self.conn.execute(
            "SELECT id, command, root, pid, mode, workers, gpus, started_at, finished_at, status, "
            f"error, {', '.join(RUN_COUNTS)} FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [RunRecord(row[0], row[1], row[2] and path_of(row[2]), *row[3:]) for row in rows]
