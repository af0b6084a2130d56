"""Merging coarse segments: a size-tiered policy (as Lucene's), each merge just another commit.

Every commit adds a small segment, so segments pile up; searching many of them costs a FAISS
call each. Segments are grouped into tiers by their live size (tier t holds sizes in
[TIER_FLOOR * TIER_GROWTH^t, TIER_FLOOR * TIER_GROWTH^(t+1))); when a tier holds MERGE_FACTOR
segments they merge into one of the next tier, so every clip is rewritten O(log N) times.
A segment whose share of tombstones passes MAX_DEAD_SHARE is rewritten alone. A merge builds
the new segment from the clips' exact coarse vectors in the fine store (CRC-checked), never
from quantised FAISS codes, and drops the merged segments' tombstones.

`mgvr index` runs the merges the policy asks for within a time budget (small flat merges cost
milliseconds; building a large IVF costs about IVF_SECONDS_PER_ROW per vector and waits for a
run with budget, or `mgvr compact`); `mgvr compact` merges every segment into one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mgvr.config import IndexConfig
from mgvr.storage.catalog import Catalog, SegmentRecord
from mgvr.storage.coarse import FLAT_MAX_ROWS
from mgvr.storage.commit import Commit
from mgvr.storage.fine import FineReader
from mgvr.storage.layout import IndexLayout

MERGE_FACTOR = 8
TIER_FLOOR = 1_000
TIER_GROWTH = 8
MAX_DEAD_SHARE = 0.3
# Measured on this project's 2-core machine (bench/bench_segments.py): training, adding and
# calibrating an HNSW-quantised IVF over 1M vectors took about 70 s.
IVF_SECONDS_PER_ROW = 1e-4
READ_CHUNK = 8192


def tier(live_rows: int) -> int:
    if live_rows < TIER_FLOOR:
        return 0
    return 1 + int(math.log(live_rows / TIER_FLOOR, TIER_GROWTH))


def plan_merges(segments: list[SegmentRecord], dead: dict[str, int]) -> list[list[str]]:
    """Groups of segment names to merge, smallest first."""
    live = {s.name: s.rows - dead.get(s.name, 0) for s in segments}
    groups = [[s.name] for s in segments
              if s.rows and dead.get(s.name, 0) / s.rows > MAX_DEAD_SHARE]
    rewritten = {name for group in groups for name in group}
    by_tier: dict[int, list[str]] = {}
    for segment in sorted(segments, key=lambda s: (live[s.name], s.name)):
        if segment.name not in rewritten:
            by_tier.setdefault(tier(live[segment.name]), []).append(segment.name)
    for names in by_tier.values():
        for start in range(0, len(names) - MERGE_FACTOR + 1, MERGE_FACTOR):
            groups.append(names[start:start + MERGE_FACTOR])
    return sorted(groups, key=lambda group: sum(live[name] for name in group))


def estimated_seconds(live_rows: int) -> float:
    """What building a merged segment of this size costs (0 for a flat one: milliseconds)."""
    return 0.0 if live_rows < FLAT_MAX_ROWS else live_rows * IVF_SECONDS_PER_ROW


@dataclass
class MergeReport:
    merges: int = 0
    segments_before: int = 0
    segments_after: int = 0
    tombstones_dropped: int = 0
    deferred: int = 0  # merges left for a run with more budget, or `mgvr compact`
    seconds: float = 0.0


def merge_segments(layout: IndexLayout, catalog: Catalog, config: IndexConfig,
                   budget_s: float | None, everything: bool = False,
                   should_stop: Callable[[], bool] = lambda: False) -> MergeReport:
    """Run the merges the policy asks for (or one merge of all segments) within `budget_s`
    seconds (None: no limit). Each merge is its own commit."""
    started = time.monotonic()
    segments = catalog.segments()
    report = MergeReport(segments_before=len(segments))
    dead = catalog.dead_per_segment()
    if everything:
        groups = [[s.name for s in segments]] if len(segments) > 1 or dead else []
    else:
        groups = plan_merges(segments, dead)
    rows = {s.name: s.rows - dead.get(s.name, 0) for s in segments}
    reader = FineReader(layout.fine_dir, config.model.embed_dim)
    for group in groups:
        cost = estimated_seconds(sum(rows[name] for name in group))
        spent = time.monotonic() - started
        if should_stop() or (budget_s is not None and spent + cost > budget_s):
            report.deferred += 1
            continue
        report.tombstones_dropped += sum(dead.get(name, 0) for name in group)
        merge_group(layout, catalog, reader, group)
        report.merges += 1
    report.segments_after = len(catalog.segments())
    report.seconds = time.monotonic() - started
    return report


def merge_group(layout: IndexLayout, catalog: Catalog, reader: FineReader,
                group: list[str]) -> None:
    """Replace the segments of `group` by one segment of their live clips."""
    locations = list(catalog.clip_locations(segments=group))
    ids = np.array([loc.clip_id for loc in locations], np.int64)
    vectors = np.empty((len(ids), reader.dim), np.float32)
    for start in range(0, len(ids), READ_CHUNK):
        chunk = locations[start:start + READ_CHUNK]
        vectors[start:start + len(chunk)] = reader.read_coarse([(c.part, c.row) for c in chunk])
    with Commit(layout, catalog) as commit:
        if len(ids):
            record = commit.add_segment(ids, vectors)
            commit.change(lambda cat: cat.assign_segment(ids.tolist(), record.name))
        for name in group:
            commit.retire_segment(name)
        commit.apply()
