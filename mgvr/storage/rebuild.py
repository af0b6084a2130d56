"""Rebuilding a lost or damaged catalog (and mgvr.json) from the Parquet parts alone.

Every part row records its clip (video path, clip index, time range, the file's size, mtime
and content key) and every part's metadata the index config. A file re-indexed after a change
has rows in several parts; the rows of the newest part naming it are its live clips (compaction
copies live rows into a newer part, so this stays true after it). Files deleted since their
last index run come back as indexed; the next `mgvr index` run sees them missing. Failed files
are not recorded in parts: the next run tries them again.

The damaged catalog is kept beside the new one as `catalog.sqlite.damaged-<time>`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgvr.config import IndexConfig
from mgvr.errors import IndexDamagedError
from mgvr.storage.catalog import Catalog, NewClip, VideoUpdate, path_of
from mgvr.storage.coarse import FLAT_MAX_ROWS
from mgvr.storage.commit import Commit
from mgvr.storage.fine import CLIP_COLUMNS, read_part_metadata
from mgvr.storage.layout import IndexLayout


@dataclass
class RebuildReport:
    parts: int = 0
    videos: int = 0
    clips: int = 0
    skipped: list[str] = field(default_factory=list)  # parts that could not be used, and why
    config_rebuilt: bool = False
    kept_damaged: str | None = None


@dataclass
class _Row:
    clip_id: int
    part: str
    row: int
    n_frames: int
    values: dict


def _config(layout: IndexLayout, metadata: dict[str, dict]) -> tuple[IndexConfig, bool]:
    """mgvr.json if it is readable, else the index config recorded in the newest part."""
    try:
        return IndexConfig.load(layout.root), False
    except Exception:  # noqa: BLE001 (any damage: fall back to the parts)
        pass
    for name in sorted(metadata, reverse=True):
        recorded = metadata[name].get("index_config")
        if recorded:
            return IndexConfig.from_dict(recorded, layout.fine_part(name)), True
    raise IndexDamagedError(f"{layout.root}: neither mgvr.json nor any Parquet part says which "
                            "model built this index; it cannot be rebuilt: re-index into a "
                            "fresh --index")


def rebuild_catalog(layout: IndexLayout) -> RebuildReport:
    """Replace the catalog by one rebuilt from the parts (caller holds the writer lock)."""
    report = RebuildReport()
    metadata = {}
    for path in sorted(layout.fine_dir.glob("part-*.parquet")):
        try:
            metadata[path.name] = read_part_metadata(path)
        except (OSError, ValueError) as e:
            report.skipped.append(f"fine/{path.name}: unreadable ({str(e).splitlines()[0]})")
    config, report.config_rebuilt = _config(layout, metadata)
    rows, newest, part_rows = _read_rows(layout, config, metadata, report)
    live = [r for r in rows if r.part == newest[r.values["video_path"]]]

    if layout.catalog.exists():
        kept = layout.catalog.with_name(f"catalog.sqlite.damaged-{int(time.time())}")
        os.replace(layout.catalog, kept)
        report.kept_damaged = kept.name
    catalog = Catalog.create(layout.catalog)
    try:
        _commit(layout, catalog, config, part_rows, rows, live, report)
    finally:
        catalog.close()
    if report.config_rebuilt:
        config.save(layout.root)
    return report


def _read_rows(layout, config, metadata, report
               ) -> tuple[list[_Row], dict[bytes, str], dict[str, int]]:
    """Every row of the usable parts, the newest part naming each video, rows per part."""
    rows: list[_Row] = []
    newest: dict[bytes, str] = {}
    part_rows: dict[str, int] = {}
    for name, meta in metadata.items():
        if meta.get("weights_sha256") != config.model.weights_sha256:
            report.skipped.append(f"fine/{name}: written by another model")
            continue
        try:
            table = pq.read_table(layout.fine_part(name), columns=CLIP_COLUMNS)
        except (OSError, ValueError) as e:
            report.skipped.append(f"fine/{name}: unreadable ({str(e).splitlines()[0]})")
            continue
        frames = pc.list_value_length(table.column("frame_times")).to_numpy()
        columns = {c: table.column(c).to_pylist() for c in CLIP_COLUMNS if c != "frame_times"}
        for offset in range(table.num_rows):
            values = {c: columns[c][offset] for c in columns}
            rows.append(_Row(values.pop("clip_id"), name, offset, int(frames[offset]), values))
            newest[values["video_path"]] = max(newest.get(values["video_path"], name), name)
        part_rows[name] = table.num_rows
    report.parts = len(part_rows)
    return rows, newest, part_rows


def _commit(layout, catalog, config, part_rows, rows, live, report) -> None:
    dim = config.model.embed_dim
    live.sort(key=lambda r: r.clip_id)
    segment_of: dict[int, str] = {}
    with Commit(layout, catalog) as commit:
        for name, count in part_rows.items():
            commit.adopt_part(name, count)
        for start in range(0, len(live), FLAT_MAX_ROWS - 1):
            chunk = live[start:start + FLAT_MAX_ROWS - 1]
            ids = np.array([r.clip_id for r in chunk], np.int64)
            record = commit.add_segment(ids, _coarse(layout, chunk, dim), kind="flat")
            segment_of.update((r.clip_id, record.name) for r in chunk)
        by_video: dict[bytes, list[_Row]] = {}
        for r in live:
            by_video.setdefault(r.values["video_path"], []).append(r)
        updates = []
        for key, clips in by_video.items():
            first = clips[0].values
            updates.append(VideoUpdate(
                path_of(key), first["video_size"], first["video_mtime_ns"], "indexed",
                tuple(NewClip(r.clip_id, r.values["clip_index"], r.values["start_s"],
                              r.values["end_s"], r.n_frames, r.part, r.row,
                              segment_of[r.clip_id]) for r in clips),
                content_key=first["content_key"], duration_s=first["duration_s"],
                width=first["width"], height=first["height"]))
        next_clip_id = max((r.clip_id for r in rows), default=0) + 1

        def insert(cat: Catalog) -> None:
            for update in updates:
                cat.apply(update)
            cat.set_next_clip_id(next_clip_id)

        commit.change(insert)
        commit.apply()
    report.videos, report.clips = len(updates), len(live)


def _coarse(layout: IndexLayout, rows: list[_Row], dim: int) -> np.ndarray:
    """Coarse vectors of these rows from their Parquet parts (the checksummed copy)."""
    vectors = np.empty((len(rows), dim), np.float32)
    by_part: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_part.setdefault(r.part, []).append(i)
    for part, positions in by_part.items():
        column = pq.read_table(layout.fine_part(part), columns=["coarse"]).column("coarse")
        for i in positions:
            vectors[i] = np.asarray(column[rows[i].row].values, np.float32)
    return vectors
