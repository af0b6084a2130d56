"""Rebuilding a lost or damaged catalog (and mgvr.json) from the Parquet parts alone.

Every part row records its clip (video path, clip index, time range, the file's size, mtime
and content key) and every part's metadata the index config. A file re-indexed after a change
has rows in several parts; the rows of the newest part naming it are its live clips (compaction
copies live rows into a newer part, so this stays true after it). Removals live only in the
lost catalog, so each file brought back is looked at: one that is gone is recorded as missing
(and removed by a later index run after its grace period); one that changed is re-indexed by
the next run. Failed files are not recorded in parts: the next run tries them again.

The new catalog is built under a temporary name and put in place only when complete, so a
rebuild killed half-way leaves the damaged catalog where it was, to be rebuilt again; once in
place, the damaged one is kept beside it as `catalog.sqlite.damaged-<time>`.
"""

from __future__ import annotations

import os
import time
from array import array
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mgvr.config import IndexConfig
from mgvr.errors import IndexDamagedError
from mgvr.storage.catalog import Catalog, NewClip, VideoUpdate, path_of
from mgvr.storage.commit import Commit, fsync_directory
from mgvr.storage.fine import CLIP_COLUMNS, read_part_coarse, read_part_columns, read_part_metadata
from mgvr.storage.layout import IndexLayout


@dataclass
class RebuildReport:
    parts: int = 0
    videos: int = 0
    clips: int = 0
    missing: int = 0  # files brought back that are gone now: recorded as missing
    skipped: list[str] = field(default_factory=list)  # parts that could not be used, and why
    config_rebuilt: bool = False
    kept_damaged: str | None = None


def config_from_parts(layout: IndexLayout) -> IndexConfig:
    """The index config recorded in the newest readable part."""
    for path in sorted(layout.fine_dir.glob("part-*.parquet"), reverse=True):
        try:
            recorded = read_part_metadata(path).get("index_config")
        except (OSError, ValueError):
            continue
        if recorded:
            return IndexConfig.from_dict(recorded, path)
    raise IndexDamagedError(f"{layout.root}: neither mgvr.json nor any Parquet part says which "
                            "model built this index; it cannot be rebuilt: re-index into a "
                            "fresh --index")


def rebuild_config(layout: IndexLayout) -> None:
    config_from_parts(layout).save(layout.root)


class _Rows:
    """Every row of the usable parts as arrays (20 bytes a row) and, per file, the newest part
    naming it: what decides which rows are live, with no object per clip."""

    def __init__(self) -> None:
        self.parts: list[str] = []  # usable parts, in order
        self.part_rows: dict[str, int] = {}
        self._clip_id, self._part, self._row, self._video = (array("q"), array("i"),
                                                             array("i"), array("i"))
        self._videos: dict[bytes, int] = {}  # video path -> its number (one entry a file)
        self._newest = array("i")  # per video number: the newest part naming it

    def add_part(self, name: str, table) -> None:
        part = len(self.parts)
        self.parts.append(name)
        self.part_rows[name] = table.num_rows
        self._clip_id.frombytes(table.column("clip_id").to_numpy().astype(np.int64).tobytes())
        self._part.frombytes(np.full(table.num_rows, part, np.int32).tobytes())
        self._row.frombytes(np.arange(table.num_rows, dtype=np.int32).tobytes())
        for key in table.column("video_path").to_pylist():
            video = self._videos.setdefault(key, len(self._videos))
            if video == len(self._newest):
                self._newest.append(part)
            self._newest[video] = part  # parts come in order: the last is the newest
            self._video.append(video)

    def live(self) -> _LiveRows:
        """The rows of the newest part naming each video, by clip id."""
        clip_id = np.frombuffer(self._clip_id, np.int64)
        part = np.frombuffer(self._part, np.int32)
        is_live = part == np.frombuffer(self._newest, np.int32)[np.frombuffer(self._video,
                                                                             np.int32)]
        live = np.flatnonzero(is_live)
        live = live[np.argsort(clip_id[live], kind="stable")]
        return _LiveRows(clip_id[live], part[live], np.frombuffer(self._row, np.int32)[live],
                         is_live, int(clip_id.max(initial=0)))


@dataclass
class _LiveRows:
    clip_id: np.ndarray  # (L,) int64, ascending
    part: np.ndarray  # (L,) int32: index into _Rows.parts
    row: np.ndarray  # (L,) int32
    is_live: np.ndarray  # (R,) bool over all rows, part after part
    max_clip_id: int


def rebuild_catalog(layout: IndexLayout) -> RebuildReport:
    """Replace the catalog by one rebuilt from the parts (caller holds the writer lock)."""
    report = RebuildReport()
    try:
        config = IndexConfig.load(layout.root)
    except Exception:  # noqa: BLE001 (any damage to mgvr.json: the parts say it again)
        config, report.config_rebuilt = config_from_parts(layout), True
    rows = _read_parts(layout, config, report)
    tmp = layout.catalog.with_name(layout.catalog.name + ".rebuild")
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    catalog = Catalog.create(tmp)
    try:
        _commit(layout, catalog, config, rows, report)
    finally:
        catalog.close()
    if report.config_rebuilt:
        config.save(layout.root)
    if layout.catalog.exists():
        kept = layout.catalog.with_name(f"catalog.sqlite.damaged-{int(time.time())}")
        os.replace(layout.catalog, kept)
        report.kept_damaged = kept.name
    os.replace(tmp, layout.catalog)
    fsync_directory(layout.root)
    return report


def _read_parts(layout: IndexLayout, config: IndexConfig, report: RebuildReport) -> _Rows:
    rows = _Rows()
    for path in sorted(layout.fine_dir.glob("part-*.parquet")):
        try:
            meta = read_part_metadata(path)
            if meta.get("weights_sha256") != config.model.weights_sha256:
                report.skipped.append(f"fine/{path.name}: written by another model")
                continue
            table = read_part_columns(path, CLIP_COLUMNS)
        except (OSError, ValueError) as e:
            report.skipped.append(f"fine/{path.name}: unreadable ({str(e).splitlines()[0]})")
            continue
        rows.add_part(path.name, table)
    report.parts = len(rows.parts)
    return rows


def _commit(layout: IndexLayout, catalog: Catalog, config: IndexConfig, rows: _Rows,
            report: RebuildReport) -> None:
    """Segments over the live clips' coarse vectors (a chunk at a time), then the catalog, one
    part at a time: its live rows read again and inserted file by file."""
    live = rows.live()

    def vectors(positions: slice) -> np.ndarray:
        out = np.empty((len(live.clip_id[positions]), config.model.embed_dim), np.float32)
        parts, places = live.part[positions], np.arange(len(out))
        for part in np.unique(parts):
            mine = places[parts == part]
            out[mine] = read_part_coarse(layout.fine_part(rows.parts[part]),
                                         live.row[positions][mine])
        return out

    now = time.time()
    with Commit(layout, catalog) as commit:
        for name, count in rows.part_rows.items():
            commit.adopt_part(name, count)
        made = commit.add_flat_segments(live.clip_id, vectors)
        first_ids = np.array([ids[0] for ids, _ in made], np.int64)
        names = [name for _, name in made]

        def insert(cat: Catalog) -> None:
            start = 0
            for name in rows.parts:
                count = rows.part_rows[name]
                is_live = live.is_live[start:start + count]
                start += count
                if not is_live.any():
                    continue
                table = read_part_columns(layout.fine_part(name), CLIP_COLUMNS)
                table = table.filter(pa.array(is_live))
                segments = np.searchsorted(first_ids, table.column("clip_id").to_numpy(),
                                           side="right") - 1
                gone = _insert_files(cat, name, table, np.flatnonzero(is_live),
                                     [names[s] for s in segments.tolist()], report)
                cat.mark_missing(gone, now)
                report.missing += len(gone)
            cat.set_next_clip_id(live.max_clip_id + 1)

        commit.change(insert)
        commit.apply()
    report.clips = len(live.clip_id)


def _insert_files(cat: Catalog, part: str, table, part_rows: np.ndarray, segments: list[str],
                  report: RebuildReport) -> list[str]:
    """The files of a part's live rows (`part_rows`: their rows in the part) with their clips;
    returns the paths that are gone now."""
    values = {c: table.column(c).to_pylist() for c in CLIP_COLUMNS if c != "frame_times"}
    frames = pc.list_value_length(table.column("frame_times")).to_numpy().tolist()
    by_video: dict[bytes, list[int]] = {}
    for i, key in enumerate(values["video_path"]):
        by_video.setdefault(key, []).append(i)
    gone = []
    for key, members in by_video.items():
        first = members[0]
        path = path_of(key)
        cat.apply(VideoUpdate(
            path, values["video_size"][first], values["video_mtime_ns"][first], "indexed",
            tuple(NewClip(values["clip_id"][m], values["clip_index"][m], values["start_s"][m],
                          values["end_s"][m], frames[m], part, int(part_rows[m]), segments[m])
                  for m in members),
            content_key=values["content_key"][first], duration_s=values["duration_s"][first],
            width=values["width"][first], height=values["height"][first]))
        report.videos += 1
        if not os.path.lexists(path):
            gone.append(path)
    return gone
