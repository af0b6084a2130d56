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
from dataclasses import dataclass, field

import numpy as np
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
    """Every row of the usable parts, as columns (a few dozen bytes a clip)."""

    def __init__(self) -> None:
        self.clip_id: list[int] = []
        self.part: list[str] = []
        self.row: list[int] = []
        self.n_frames: list[int] = []
        self.values: dict[str, list] = {c: [] for c in CLIP_COLUMNS[2:]}
        self.part_rows: dict[str, int] = {}

    def add_part(self, name: str, table) -> None:
        frames = pc.list_value_length(table.column("frame_times")).to_numpy()
        self.clip_id += table.column("clip_id").to_pylist()
        self.part += [name] * table.num_rows
        self.row += list(range(table.num_rows))
        self.n_frames += frames.tolist()
        for column, values in self.values.items():
            values += table.column(column).to_pylist()
        self.part_rows[name] = table.num_rows


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
    report.parts = len(rows.part_rows)
    return rows


def _live_rows(rows: _Rows) -> list[int]:
    """Positions of the rows of the newest part naming each video, by clip id."""
    newest: dict[bytes, str] = {}
    for key, part in zip(rows.values["video_path"], rows.part, strict=True):
        newest[key] = max(newest.get(key, part), part)
    live = [i for i, key in enumerate(rows.values["video_path"]) if rows.part[i] == newest[key]]
    return sorted(live, key=lambda i: rows.clip_id[i])


def _commit(layout: IndexLayout, catalog: Catalog, config: IndexConfig, rows: _Rows,
            report: RebuildReport) -> None:
    live = _live_rows(rows)
    ids = np.array([rows.clip_id[i] for i in live], np.int64)

    def vectors(positions: slice) -> np.ndarray:
        chosen = live[positions]
        out = np.empty((len(chosen), config.model.embed_dim), np.float32)
        by_part: dict[str, list[int]] = {}
        for at, i in enumerate(chosen):
            by_part.setdefault(rows.part[i], []).append(at)
        for part, places in by_part.items():
            out[places] = read_part_coarse(layout.fine_part(part),
                                           np.array([rows.row[chosen[a]] for a in places]))
        return out

    now = time.time()
    with Commit(layout, catalog) as commit:
        for name, count in rows.part_rows.items():
            commit.adopt_part(name, count)
        segment_of = {}
        for chunk_ids, name in commit.add_flat_segments(ids, vectors):
            segment_of.update((int(i), name) for i in chunk_ids)
        by_video: dict[bytes, list[int]] = {}
        for i in live:
            by_video.setdefault(rows.values["video_path"][i], []).append(i)
        updates, gone = [], []
        for key, members in by_video.items():
            first = {c: values[members[0]] for c, values in rows.values.items()}
            path = path_of(key)
            updates.append(VideoUpdate(
                path, first["video_size"], first["video_mtime_ns"], "indexed",
                tuple(NewClip(rows.clip_id[i], rows.values["clip_index"][i],
                              rows.values["start_s"][i], rows.values["end_s"][i],
                              rows.n_frames[i], rows.part[i], rows.row[i],
                              segment_of[rows.clip_id[i]]) for i in members),
                content_key=first["content_key"], duration_s=first["duration_s"],
                width=first["width"], height=first["height"]))
            if not os.path.lexists(path):
                gone.append(path)
        next_clip_id = max(rows.clip_id, default=0) + 1

        def insert(cat: Catalog) -> None:
            for update in updates:
                cat.apply(update)
            cat.mark_missing(gone, now)
            cat.set_next_clip_id(next_clip_id)

        commit.change(insert)
        commit.apply()
    report.videos, report.clips, report.missing = len(updates), len(live), len(gone)
