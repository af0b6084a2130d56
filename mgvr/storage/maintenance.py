"""Keeping an index directory tidy: status and compaction.

Callers hold the writer lock for anything that changes files. Orphan cleanup lives in
`storage.orphans`, verify and repair in `storage.verify`, the catalog's rebuild in
`storage.rebuild`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from mgvr.config import IndexConfig
from mgvr.errors import IndexDamagedError
from mgvr.hashing import sha256_file
from mgvr.storage.catalog import Catalog
from mgvr.storage.commit import Commit
from mgvr.storage.fine import iter_part_rows, part_metadata
from mgvr.storage.layout import IndexLayout
from mgvr.storage.merge import MergeReport, merge_segments


def current_bytes(layout: IndexLayout, catalog: Catalog) -> int:
    """Bytes of what the current generation needs: its registered files, the catalog and the
    config (retired files, kept a while for readers of older generations, are not counted)."""
    retired = catalog.retired()
    files = sum(size for name, (size, _) in catalog.files().items() if name not in retired)
    return files + sum(p.stat().st_size for p in (layout.catalog, layout.config) if p.exists())


def disk_bytes(layout: IndexLayout) -> int:
    """Bytes the index takes on disk (a file hard-linked twice counts once)."""
    seen, total = set(), 0
    for path in layout.root.rglob("*"):
        with contextlib.suppress(OSError):
            info = path.stat()
            if path.is_file() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


@dataclass(frozen=True)
class CompactReport:
    parts_rewritten: int
    rows_dropped: int
    merge: MergeReport
    bytes_before: int
    bytes_after: int


def compact(layout: IndexLayout, catalog: Catalog, config: IndexConfig) -> CompactReport:
    """Rewrite parts that hold rows of removed clips, keeping only live rows (with their
    thumbnails and current paths), then merge every coarse segment into one."""
    before = current_bytes(layout, catalog)
    live = catalog.live_rows_per_part()
    stale = [part for part, rows in catalog.parts().items() if live.get(part, 0) < rows]
    dropped = 0
    if stale:
        dropped = _rewrite_parts(layout, catalog, config, stale)
    merged = merge_segments(layout, catalog, config, budget_s=None, everything=True)
    return CompactReport(len(stale), dropped, merged, before, current_bytes(layout, catalog))


def _rewrite_parts(layout: IndexLayout, catalog: Catalog, config: IndexConfig,
                   stale: list[str]) -> int:
    dim = config.model.embed_dim
    sums = catalog.files()
    for part in stale:  # never copy damaged rows into a part with a fresh checksum
        name = layout.relative(layout.fine_part(part))
        if sha256_file(layout.fine_part(part)) != sums.get(name, (0, None))[1]:
            raise IndexDamagedError(f"{layout.root / name}: fails its checksum; run `mgvr "
                                    "verify --repair` before compacting")
    moves: list[tuple[int, str, int]] = []
    total = 0
    with Commit(layout, catalog) as commit:
        name, writer = None, None
        for part in sorted(stale):
            alive = {loc.clip_id: loc.video_path for loc in catalog.clip_locations(part=part)}
            for row in iter_part_rows(layout.fine_part(part), dim):
                total += 1
                if row.clip_id not in alive:
                    continue
                if writer is None:
                    name, writer = commit.new_part(part_metadata(config))
                clip = replace(row.clip, video_path=alive[row.clip_id])  # moves since written
                moves.append((row.clip_id, name, writer.append(replace(row, clip=clip))))
            commit.retire_part(part)
        if writer is not None:
            commit.add_part(name, writer)
        commit.change(lambda cat: cat.relocate_clips(moves))
        commit.apply()
    return total - len(moves)


def status(layout: IndexLayout, catalog: Catalog, runs: int = 5) -> dict:
    """What is indexed, what failed, recent runs, segments and size on disk, as plain data."""
    config = IndexConfig.load(layout.root)
    counts = catalog.counts()
    dead = catalog.dead_per_segment()
    return {
        "index": str(layout.root),
        "model": config.model.describe(),
        "frames_per_clip": config.frames_per_clip,
        "clip_seconds": config.clip_seconds,
        "generation": catalog.generation(),
        "files_indexed": counts["videos_indexed"],
        "files_missing": counts["videos_missing"],
        "files_failed": counts["videos_failed"],
        "clips": counts["clips"],
        "disk_bytes": disk_bytes(layout),
        "segments": [{"name": s.name, "kind": s.kind, "rows": s.rows,
                      "dead": dead.get(s.name, 0), "nlist": s.nlist, "nprobe": s.nprobe}
                     for s in catalog.segments()],
        "failed": [{"path": path, "reason": reason, "detail": detail}
                   for path, reason, detail in catalog.failures()],
        "missing": [{"path": path, "since": since} for path, since in catalog.missing()],
        "runs": [run.__dict__ for run in catalog.recent_runs(runs)],
    }
