"""Keeping an index directory healthy: orphan cleanup, status, verify/repair, compact.

Callers hold the writer lock for anything that changes files (cleanup, repair, compact).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgvr.config import IndexConfig
from mgvr.errors import MgvrError
from mgvr.storage.catalog import Catalog
from mgvr.storage.coarse import CoarseIndex
from mgvr.storage.fine import FinePartWriter, FineReader
from mgvr.storage.layout import IndexLayout

COARSE_TOLERANCE = 1e-3  # FAISS float32 vs the Parquet copy of the same coarse vector


def part_metadata(config: IndexConfig) -> dict[str, object]:
    """What every Parquet part records about the model and shape of its rows."""
    return {"model": config.model.describe(), "weights_sha256": config.model.weights_sha256,
            "dim": config.model.embed_dim, "frames_per_clip": config.frames_per_clip}


def part_stem(name: str) -> str:
    """`part-000001` for the part file and every sidecar file that belongs to it."""
    return name.split(".", 1)[0]


def _uncommitted(layout: IndexLayout, catalog: Catalog) -> list[Path]:
    """FAISS generations above the committed one, and fine files of no committed part (or
    temporary), sorted: what a killed run leaves behind, apart from the root's temp files."""
    current = catalog.generation()
    paths = [layout.coarse(g) for g in layout.coarse_generations() if g > current]
    if layout.fine_dir.is_dir():
        committed = {part_stem(name) for name in catalog.part_names()}
        paths += [p for p in sorted(layout.fine_dir.iterdir())
                  if part_stem(p.name) not in committed or p.name.endswith(".tmp")]
    return paths


def _orphan_name(layout: IndexLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def remove_orphans(layout: IndexLayout, catalog: Catalog) -> list[str]:
    """Delete what a killed run left behind: uncommitted parts, generations and temp files."""
    removed = []
    for path in [*_uncommitted(layout, catalog), *layout.root.glob("*.tmp")]:
        path.unlink(missing_ok=True)
        removed.append(_orphan_name(layout, path))
    return removed


def disk_bytes(layout: IndexLayout) -> int:
    return sum(p.stat().st_size for p in layout.root.rglob("*") if p.is_file())


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # harmless; removed by the next run
    repaired: list[str] = field(default_factory=list)
    reindex: list[str] = field(default_factory=list)  # files whose clips had to be dropped

    @property
    def clean(self) -> bool:
        return not self.problems


def verify(layout: IndexLayout, catalog: Catalog, repair: bool = False) -> VerifyReport:
    """Check catalog, current FAISS generation and Parquet parts against each other.

    Invariants: every live clip has exactly one coarse vector and one fine row of the right
    shape and model; no vector belongs to a clip the catalog does not hold.
    """
    report = VerifyReport()
    config = IndexConfig.load(layout.root)
    dim = config.model.embed_dim
    report.problems += [f"catalog: {p}" for p in catalog.integrity_problems()]
    locations = catalog.clip_locations()
    live = {clip_id for clip_id, *_ in locations}

    bad_clips, bad_parts = _check_fine(layout, catalog, config, locations, report)
    stored, coarse_ok = _check_coarse(layout, catalog, dim, live, report)
    report.orphans = _orphans(layout, catalog)
    if stored is not None and coarse_ok:
        _compare_coarse_vectors(layout, stored, locations, dim, bad_clips, report)

    if repair and (report.problems or report.orphans):
        _repair(layout, catalog, config, locations, bad_clips, bad_parts, report)
    return report


def _orphans(layout: IndexLayout, catalog: Catalog) -> list[str]:
    return [_orphan_name(layout, path) for path in _uncommitted(layout, catalog)]


def _check_fine(layout, catalog, config, locations, report) -> tuple[set[int], list[str]]:
    """Problems with fine rows: ids of clips whose fine row is missing or wrong, and the
    registered parts that cannot be used at all."""
    dim = config.model.embed_dim
    by_part: dict[str, list[tuple[int, int, int]]] = {}
    for clip_id, part, row, n_frames, _ in locations:
        by_part.setdefault(part, []).append((clip_id, row, n_frames))
    bad: set[int] = set()
    bad_parts: list[str] = []
    for part, expected_rows in catalog.parts().items():
        clips = by_part.pop(part, [])
        path = layout.fine_part(part)
        try:
            parquet = pq.ParquetFile(path)
            table = parquet.read(columns=["clip_id", "frame_times", "features"])
            metadata = json.loads(parquet.schema_arrow.metadata[b"mgvr"])
        except (OSError, KeyError, ValueError, TypeError) as e:
            report.problems += [f"fine/{part}: unreadable ({str(e).splitlines()[0]}); "
                                f"{len(clips)} clips lost their frame features"]
            bad.update(clip_id for clip_id, _, _ in clips)
            bad_parts.append(part)
            continue
        if metadata.get("weights_sha256") != config.model.weights_sha256:
            report.problems.append(f"fine/{part}: written by another model")
            bad.update(clip_id for clip_id, _, _ in clips)
            bad_parts.append(part)
            continue
        if table.num_rows != expected_rows:
            report.problems.append(f"fine/{part}: {table.num_rows} rows, catalog says "
                                   f"{expected_rows}")
        ids = table.column("clip_id").to_numpy()
        times = pc.list_value_length(table.column("frame_times")).to_numpy()
        values = pc.list_value_length(table.column("features")).to_numpy()
        for clip_id, row, n_frames in clips:
            if row >= len(ids) or ids[row] != clip_id or times[row] != n_frames \
                    or values[row] != n_frames * dim:
                report.problems.append(f"clip {clip_id}: no fine row of shape "
                                       f"{n_frames}x{dim} at fine/{part} row {row}")
                bad.add(clip_id)
    for part, clips in by_part.items():
        report.problems.append(f"fine/{part}: named by {len(clips)} clips but not registered")
        bad.update(clip_id for clip_id, _, _ in clips)
    return bad, bad_parts


def _check_coarse(layout, catalog, dim, live, report
                  ) -> tuple[tuple[np.ndarray, np.ndarray] | None, bool]:
    """The current generation's (ids, vectors), or None when unreadable; and whether its ids
    match the catalog's live clips exactly."""
    generation = catalog.generation()
    if generation == 0:
        if live:
            report.problems.append("coarse: no committed generation but the catalog has clips")
        return None, not live
    path = layout.coarse(generation)
    if not path.is_file():
        report.problems.append(f"coarse: {path.name} (the current generation) is missing")
        return None, False
    try:
        coarse = CoarseIndex.load(path, dim)
    except MgvrError as e:
        report.problems.append(f"coarse: {e}")
        return None, False
    ids, vectors = coarse.items()  # one pass over the index (IVF lists included)
    present = set(ids.tolist())
    ok = True
    if len(ids) != len(present):
        report.problems.append(f"coarse: {len(ids) - len(present)} duplicate vectors")
        ok = False
    missing = live - present
    dead = present - live
    if missing:
        report.problems.append(f"coarse: {len(missing)} live clips have no coarse vector "
                               f"(e.g. clip {min(missing)})")
        ok = False
    if dead:
        report.problems.append(f"coarse: {len(dead)} vectors of removed clips are searchable "
                               f"(e.g. clip {min(dead)})")
        ok = False
    return (ids, vectors), ok


def _compare_coarse_vectors(layout, items, locations, dim, bad_clips, report) -> None:
    ids, vectors = items
    stored = dict(zip(ids.tolist(), vectors, strict=True))
    reader = FineReader(layout.fine_dir, dim)
    good = [(clip_id, part, row) for clip_id, part, row, _, _ in locations
            if clip_id not in bad_clips]
    rows = reader.read([(part, row) for _, part, row in good])
    wrong = [clip_id for (clip_id, _, _), fine in zip(good, rows, strict=True)
             if np.abs(stored[clip_id] - fine.coarse).max() > COARSE_TOLERANCE]
    if wrong:
        report.problems.append(f"coarse: {len(wrong)} vectors differ from the clips' stored "
                               f"coarse vectors (e.g. clip {wrong[0]})")


def _repair(layout, catalog, config, locations, bad_clips, bad_parts, report) -> None:
    """Rebuild what the data present allows; drop clips whose frame features are gone."""
    if not report.problems:
        removed = remove_orphans(layout, catalog)
        report.repaired.append(f"removed {len(removed)} orphan files")
        return
    dropped_paths = sorted({path for clip_id, _, _, _, path in locations if clip_id in bad_clips})
    good = [(clip_id, part, row) for clip_id, part, row, _, _ in locations
            if clip_id not in bad_clips]
    reader = FineReader(layout.fine_dir, config.model.embed_dim)
    coarse = CoarseIndex.empty(config.model.embed_dim)
    if good:
        rows = reader.read([(part, row) for _, part, row in good])
        coarse.add(np.array([clip_id for clip_id, _, _ in good], np.int64),
                   np.stack([row.coarse for row in rows]))
    generation = layout.next_generation(catalog.generation())
    coarse.save(layout.coarse(generation))
    with catalog.transaction():
        for path in dropped_paths:
            catalog.remove_video(path)
        catalog.remove_parts(bad_parts)
        catalog.set_generation(generation)
    report.repaired.append(f"coarse: rebuilt generation {generation} from the fine store "
                           f"({len(good)} clips)")
    report.reindex += dropped_paths
    if dropped_paths:
        report.repaired.append(f"catalog: forgot {len(dropped_paths)} files whose frame features "
                               "were lost; the next `mgvr index` run indexes them again")
    for old in layout.coarse_generations():
        if old < generation:
            layout.coarse(old).unlink(missing_ok=True)
    removed = remove_orphans(layout, catalog)
    if removed:
        report.repaired.append(f"removed {len(removed)} orphan files")


@dataclass(frozen=True)
class CompactReport:
    parts_rewritten: int
    rows_dropped: int
    bytes_before: int
    bytes_after: int


def compact(layout: IndexLayout, catalog: Catalog, config: IndexConfig) -> CompactReport:
    """Rewrite parts that hold rows of removed clips, keeping only live rows."""
    before = disk_bytes(layout)
    live_by_part: dict[str, list[tuple[int, int]]] = {}
    for clip_id, part, row, _, _ in catalog.clip_locations():
        live_by_part.setdefault(part, []).append((clip_id, row))
    reader = FineReader(layout.fine_dir, config.model.embed_dim)
    stale = {part: rows for part, rows in catalog.parts().items()
             if len(live_by_part.get(part, [])) < rows}
    if not stale:
        return CompactReport(0, 0, before, before)
    number = catalog.next_part_number()
    moves: list[tuple[int, str, int]] = []
    new_parts: list[tuple[str, int]] = []
    writer = None
    for part in sorted(stale):
        live = sorted(live_by_part.get(part, []), key=lambda item: item[1])
        if not live:
            continue
        rows = reader.read([(part, row) for _, row in live])
        if writer is None:
            name = layout.fine_part_name(number)
            writer = FinePartWriter(layout.fine_part(name), part_metadata(config))
        for (clip_id, _), fine in zip(live, rows, strict=True):
            moves.append((clip_id, name, writer.append(fine)))
    if writer is not None:
        writer.close()
        new_parts.append((name, writer.rows))
    # Readers cache clip locations per generation: a new generation (the same FAISS file,
    # hard-linked) tells them the locations moved.
    generation = catalog.generation()
    next_generation = layout.next_generation(generation)
    if generation:
        os.link(layout.coarse(generation), layout.coarse(next_generation))
    with catalog.transaction():
        for name, rows in new_parts:
            catalog.add_part(name, rows)
        catalog.relocate_clips(moves)
        catalog.remove_parts(list(stale))
        if generation:
            catalog.set_generation(next_generation)
    for part in stale:
        for path in layout.fine_dir.glob(f"{part_stem(part)}.*"):
            with contextlib.suppress(OSError):
                path.unlink()
    dropped = sum(stale.values()) - len(moves)
    return CompactReport(len(stale), dropped, before, disk_bytes(layout))


def status(layout: IndexLayout, catalog: Catalog, runs: int = 5) -> dict:
    """What is indexed, what failed, recent runs and size on disk, as plain data."""
    config = IndexConfig.load(layout.root)
    counts = catalog.counts()
    return {
        "index": str(layout.root),
        "model": config.model.describe(),
        "frames_per_clip": config.frames_per_clip,
        "clip_seconds": config.clip_seconds,
        "generation": catalog.generation(),
        "files_indexed": counts["videos_indexed"],
        "files_failed": counts["videos_failed"],
        "clips": counts["clips"],
        "disk_bytes": disk_bytes(layout),
        "failed": [{"path": path, "reason": reason, "detail": detail}
                   for path, reason, detail in catalog.failures()],
        "runs": [run.__dict__ for run in catalog.recent_runs(runs)],
    }
