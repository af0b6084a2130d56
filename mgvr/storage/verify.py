"""`mgvr verify [--repair]`: check every file of an index against the catalog, and repair what
verified data allows.

Checks, streamed part by part and segment by segment so memory stays flat at any size:
- the catalog's own integrity;
- every registered file exists with its recorded size and sha256;
- every live clip has a row of its shape in its Parquet part and sidecar, written by this model;
- every live clip is in exactly one coarse segment, with the vector its fine row records; every
  other vector of a segment is a tombstone (so no removed clip is searchable);
- unregistered files: a killed run's orphans (deleted by the next run) and parts of an earlier
  catalog (kept).

Repair never builds from unverified bytes: a sidecar that fails its checksum is rebuilt from
its Parquet part when that part passes its own; a segment is rebuilt from the clips' coarse
vectors in verified fine files; clips whose Parquet part is lost are forgotten and their files
listed for re-indexing. Each repair step is a commit.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from mgvr.config import IndexConfig
from mgvr.errors import MgvrError
from mgvr.hashing import sha256_file
from mgvr.storage.catalog import Catalog, ClipLocation, SegmentRecord
from mgvr.storage.coarse import load_segment, segment_pieces
from mgvr.storage.commit import Commit
from mgvr.storage.fine import (
    SidecarFile,
    open_files_budget,
    read_part_coarse,
    read_part_columns,
    read_part_metadata,
    sidecar_path,
    write_sidecar,
)
from mgvr.storage.layout import IndexLayout
from mgvr.storage.orphans import remove_orphans, unregistered_files

# Largest |FAISS - expected| per dimension. An SQ8 segment is expected to hold its own coding
# of the fine copy (encode then decode with the segment's quantizer, exact): a bound on the
# raw difference or the cosine would flag the rare value clipped by the quantizer's ranges.
EXACT_TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # harmless; removed by the next run
    foreign: list[str] = field(default_factory=list)  # parts of an earlier catalog, kept
    repaired: list[str] = field(default_factory=list)
    reindex: list[str] = field(default_factory=list)  # files whose clips had to be dropped

    @property
    def clean(self) -> bool:
        return not self.problems


@dataclass
class _Findings:
    """What the checks found, in a form repair can act on."""

    damaged_files: set[str] = field(default_factory=set)  # relative names
    bad_parts: set[str] = field(default_factory=set)  # Parquet unusable: clips lost
    bad_sidecars: set[str] = field(default_factory=set)  # rebuildable from the Parquet part
    bad_clips: set[int] = field(default_factory=set)  # no usable fine row
    bad_segments: set[str] = field(default_factory=set)  # to rebuild from fine data
    untombstoned: dict[str, list[int]] = field(default_factory=dict)  # dead ids still present


class _Locations:
    """Live clips as sorted arrays (about 30 bytes a clip), to find a clip's part, row and
    segment; and the sidecars their coarse vectors are read from (open files, LRU)."""

    def __init__(self, catalog: Catalog) -> None:
        ids, parts, rows, segments = array("q"), array("i"), array("q"), array("i")
        part_index: dict[str, int] = {}
        segment_index: dict[str, int] = {}
        for loc in catalog.clip_locations():  # streamed: no object per clip is kept
            ids.append(loc.clip_id)
            parts.append(part_index.setdefault(loc.part, len(part_index)))
            rows.append(loc.row)
            segments.append(segment_index.setdefault(loc.segment, len(segment_index)))
        self.ids = np.frombuffer(ids, np.int64)
        self.parts = list(part_index)
        self.part = np.frombuffer(parts, np.int32)
        self.row = np.frombuffer(rows, np.int64)
        # One shared str object per segment name: 8 bytes a clip.
        self.segment = np.array(list(segment_index), object)[np.frombuffer(segments, np.int32)]
        self._sidecars: OrderedDict[str, SidecarFile] = OrderedDict()
        self._max_open = open_files_budget()

    def sidecar(self, layout: IndexLayout, part: str) -> SidecarFile:
        if part in self._sidecars:
            self._sidecars.move_to_end(part)
        else:
            self._sidecars[part] = SidecarFile(sidecar_path(layout.fine_part(part)))
            if len(self._sidecars) > self._max_open:
                self._sidecars.popitem(last=False)[1].close()
        return self._sidecars[part]

    def close_sidecars(self) -> None:
        while self._sidecars:
            self._sidecars.popitem()[1].close()

    def find(self, clip_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, is_live) of `clip_ids`: where each would sit, and whether it is live."""
        positions = np.minimum(np.searchsorted(self.ids, clip_ids), max(len(self.ids) - 1, 0))
        if not len(self.ids):
            return positions, np.zeros(len(clip_ids), bool)
        return positions, self.ids[positions] == clip_ids


def verify(layout: IndexLayout, catalog: Catalog, repair: bool = False) -> VerifyReport:
    """Check the index; with `repair`, fix what verified data allows (caller holds the lock)."""
    report = VerifyReport()
    config = IndexConfig.load(layout.root)
    report.problems += [f"catalog: {p}" for p in catalog.integrity_problems()]
    found = _Findings()
    _check_files(layout, catalog, report, found)
    live = _Locations(catalog)
    try:
        _check_parts(layout, catalog, config, live, report, found)
        _check_segments(layout, catalog, config, live, report, found)
        orphans, foreign = unregistered_files(layout, catalog)
        report.orphans = [layout.relative(p) for p in orphans]
        report.foreign = [layout.relative(p) for p in foreign]
        if repair:
            _repair(layout, catalog, config, live, report, found)
    finally:
        live.close_sidecars()
    return report


def _check_files(layout, catalog, report, found) -> None:
    retired = catalog.retired()
    for name, (size, sha) in sorted(catalog.files().items()):
        if name in retired:
            continue
        path = layout.root / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
        elif path.stat().st_size != size:
            report.problems.append(f"{name}: {path.stat().st_size} bytes, catalog says {size}")
        elif sha256_file(path) != sha:
            report.problems.append(f"{name}: fails its checksum (damaged on disk)")
        else:
            continue
        found.damaged_files.add(name)
    registered = set(catalog.files())
    for part in catalog.parts():
        for path in layout.part_files(part):
            if layout.relative(path) not in registered:
                report.problems.append(f"{layout.relative(path)}: not registered")
                found.damaged_files.add(layout.relative(path))
    for segment in catalog.segments():
        name = layout.relative(layout.segment(segment.name))
        if name not in registered:
            report.problems.append(f"{name}: not registered")
            found.damaged_files.add(name)


def _check_parts(layout, catalog, config, live, report, found) -> None:
    dim = config.model.embed_dim
    for part, expected_rows in catalog.parts().items():
        parquet_path, sidecar = layout.part_files(part)
        clips = [loc for loc in catalog.clip_locations(part=part)]
        if layout.relative(parquet_path) in found.damaged_files:
            found.bad_parts.add(part)
        else:
            try:
                metadata = read_part_metadata(parquet_path)
                table = read_part_columns(parquet_path, ["clip_id", "frame_times"])
            except (OSError, ValueError) as e:
                report.problems.append(f"fine/{part}: unreadable ({str(e).splitlines()[0]})")
                found.bad_parts.add(part)
            else:
                if metadata.get("weights_sha256") != config.model.weights_sha256 \
                        or metadata.get("dim") != dim:
                    report.problems.append(f"fine/{part}: written by another model")
                    found.bad_parts.add(part)
                elif table.num_rows != expected_rows:
                    report.problems.append(f"fine/{part}: {table.num_rows} rows, catalog says "
                                           f"{expected_rows}")
                else:
                    _check_rows(part, table, clips, report, found)
        if part in found.bad_parts:
            found.bad_clips.update(loc.clip_id for loc in clips)
            if clips:
                report.problems.append(f"fine/{part}: {len(clips)} clips lost their frame "
                                       "features")
            continue
        if layout.relative(sidecar) in found.damaged_files:
            found.bad_sidecars.add(part)
            continue
        try:
            with SidecarFile(sidecar) as records:
                rows, dtype = records.rows, records.dtype
        except (OSError, ValueError) as e:
            report.problems.append(f"{layout.relative(sidecar)}: unreadable ({e})")
            found.bad_sidecars.add(part)
            continue
        if rows != expected_rows or dtype["features"].shape[1:] != (dim,):
            report.problems.append(f"{layout.relative(sidecar)}: does not match its part")
            found.bad_sidecars.add(part)


def _check_rows(part: str, table, clips: list[ClipLocation], report, found) -> None:
    ids = table.column("clip_id").to_numpy()
    frames = pc.list_value_length(table.column("frame_times")).to_numpy()
    for loc in clips:
        if loc.row >= len(ids) or ids[loc.row] != loc.clip_id or frames[loc.row] != loc.n_frames:
            report.problems.append(f"clip {loc.clip_id}: no fine row of {loc.n_frames} frames at "
                                   f"fine/{part} row {loc.row}")
            found.bad_clips.add(loc.clip_id)


def _fine_coarse(layout, live: _Locations, positions: np.ndarray, dim: int,
                 bad_sidecars: set[str]) -> np.ndarray:
    """Coarse vectors of live clips (by position in `live`) from their fine files."""
    out = np.empty((len(positions), dim), np.float32)
    for part_index in np.unique(live.part[positions]):
        part = live.parts[part_index]
        mine = np.flatnonzero(live.part[positions] == part_index)
        rows = live.row[positions[mine]]
        if part in bad_sidecars:
            out[mine] = read_part_coarse(layout.fine_part(part), rows)
        else:
            out[mine] = live.sidecar(layout, part).read_field("coarse", rows)
    return out


def _check_segments(layout, catalog, config, live, report, found) -> None:
    dim = config.model.embed_dim
    seen = np.zeros(len(live.ids), np.int32)
    for segment in catalog.segments():
        name = layout.relative(layout.segment(segment.name))
        if name in found.damaged_files:
            found.bad_segments.add(segment.name)
            continue
        try:  # IVF lists are read one at a time: an unreadable one raises mid-walk
            _check_segment(layout, catalog, segment, live, seen, report, found, dim)
        except MgvrError as e:
            report.problems.append(f"coarse: {e}")
            found.bad_segments.add(segment.name)
    unplaced = np.flatnonzero(seen == 0)
    if len(unplaced):
        report.problems.append(f"coarse: {len(unplaced)} live clips have no coarse vector "
                               f"(e.g. clip {live.ids[unplaced[0]]})")
        found.bad_segments.update(live.segment[unplaced].tolist())


def _stored_as(stored: np.ndarray, fine: np.ndarray, index) -> np.ndarray:
    """(N,) whether each FAISS vector is the fine copy, as its segment's codes keep it."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        expected = fine
    else:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        expected = (ivf.sq.decode(ivf.sq.compute_codes(fine))
                    if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else fine)
    return np.abs(stored - expected).max(axis=1) <= EXACT_TOLERANCE


def _check_segment(layout, catalog, segment: SegmentRecord, live, seen, report, found,
                   dim) -> None:
    """One segment, loaded here so that it is freed before the next one is loaded."""
    path = layout.segment(segment.name)
    index = load_segment(path, dim, sha256=None, lists_on_disk=True)
    dead = set(catalog.tombstones(segment.name))
    bad_clips = np.fromiter(found.bad_clips, np.int64, len(found.bad_clips))
    wrong = extra = duplicate = 0
    for ids, vectors in segment_pieces(index, path):
        positions, is_live = live.find(ids)
        mine = is_live.copy()
        mine[is_live] = live.segment[positions[is_live]] == segment.name
        stray = ids[~mine]
        untombstoned = [int(i) for i in stray if int(i) not in dead]
        if untombstoned:
            extra += len(untombstoned)
            found.untombstoned.setdefault(segment.name, []).extend(untombstoned)
        positions = positions[mine]
        duplicate += int((seen[positions] > 0).sum())
        seen[positions] += 1
        good = ~np.isin(live.ids[positions], bad_clips)
        if good.any():
            fine = _fine_coarse(layout, live, positions[good], dim, found.bad_sidecars)
            wrong += int((~_stored_as(vectors[mine][good], fine, index)).sum())
    if extra:
        report.problems.append(f"coarse: {extra} vectors of removed clips are searchable in "
                               f"{segment.name} (e.g. clip "
                               f"{found.untombstoned[segment.name][0]})")
    if duplicate:
        report.problems.append(f"coarse: {duplicate} clips have more than one vector")
        found.bad_segments.add(segment.name)
    if wrong:
        report.problems.append(f"coarse: {wrong} vectors of {segment.name} differ from the "
                               "clips' stored coarse vectors")
        found.bad_segments.add(segment.name)


def _repair(layout, catalog, config, live: _Locations, report, found) -> None:
    dim = config.model.embed_dim
    if found.bad_sidecars:
        with Commit(layout, catalog) as commit:
            for part in sorted(found.bad_sidecars):
                commit.replace_file(write_sidecar(layout.fine_part(part), dim,
                                                  config.frames_per_clip))
            commit.apply()
        report.repaired.append(f"rebuilt {len(found.bad_sidecars)} sidecars from their "
                               "Parquet parts")
        live.close_sidecars()  # the damaged files
    lost_paths = sorted({loc.video_path for loc in catalog.clip_locations()
                         if loc.clip_id in found.bad_clips}) if found.bad_clips else []
    if found.bad_segments or found.untombstoned or lost_paths or found.bad_parts:
        _repair_catalog_and_segments(layout, catalog, live, report, found, dim, lost_paths)
    removed = remove_orphans(layout, catalog)
    if removed:
        report.repaired.append(f"removed {len(removed)} orphan files")


def _repair_catalog_and_segments(layout, catalog, live, report, found, dim,
                                 lost_paths) -> None:
    with Commit(layout, catalog) as commit:
        for name in sorted(found.bad_segments):
            keep = np.flatnonzero((live.segment == name)
                                  & ~np.isin(live.ids, list(found.bad_clips)))
            made = commit.add_flat_segments(
                live.ids[keep], lambda chunk, keep=keep: _fine_coarse(layout, live, keep[chunk],
                                                                      dim, set()))
            for ids, segment in made:
                commit.change(lambda cat, ids=ids, segment=segment:
                              cat.assign_segment(ids.tolist(), segment))
            report.repaired.append(f"coarse: rebuilt {name} from the fine store "
                                   f"({len(keep)} clips)")
        untombstoned = {s: ids for s, ids in found.untombstoned.items()
                        if s not in found.bad_segments}

        def fix(cat: Catalog) -> None:
            for segment, ids in untombstoned.items():
                cat.add_tombstones(ids, segment)
            for path in lost_paths:
                cat.remove_video(path)

        commit.change(fix)
        for name in found.bad_segments:
            commit.retire_segment(name)
        for part in found.bad_parts:
            commit.retire_part(part)
        commit.apply()
    if untombstoned:
        report.repaired.append(f"coarse: {sum(map(len, untombstoned.values()))} removed clips "
                               "no longer searchable")
    if lost_paths:
        report.repaired.append(f"catalog: forgot {len(lost_paths)} files whose frame features "
                               "were lost; the next `mgvr index` run indexes them again")
    report.reindex += lost_paths


def verify_directory(layout: IndexLayout, repair: bool = False) -> VerifyReport:
    """verify() on an index directory, whatever state its catalog and config are in: damage
    there is a problem to report, and with `repair` the catalog (and mgvr.json) are rebuilt
    from the Parquet parts first. The caller holds the lock (shared without `repair`)."""
    from mgvr.errors import IncompatibleIndexError, IndexDamagedError
    from mgvr.storage.rebuild import rebuild_catalog, rebuild_config

    if layout.never_committed():
        catalog = layout.open_catalog()
        try:
            orphans, foreign = unregistered_files(layout, catalog)
        finally:
            catalog.close()
        return VerifyReport(orphans=[layout.relative(p) for p in orphans],
                            foreign=[layout.relative(p) for p in foreign])
    rebuilt: list[str] = []
    try:
        IndexConfig.load(layout.root)
    except IncompatibleIndexError as e:
        if not repair:
            return VerifyReport(problems=[str(e).split("; ")[0]])
        if layout.catalog.is_file():  # the catalog may be whole: rebuild only the config
            rebuild_config(layout)
            rebuilt.append("mgvr.json: rebuilt from the parts' metadata")
    try:
        catalog = layout.open_catalog()
    except IndexDamagedError as e:
        if not repair:
            return VerifyReport(problems=[str(e).split("; ")[0]])
        result = rebuild_catalog(layout)
        rebuilt.append(f"catalog: rebuilt from {result.parts} Parquet parts ({result.videos} "
                       f"files, {result.clips} clips)" + (
                           f"; the damaged catalog is kept as {result.kept_damaged}"
                           if result.kept_damaged else ""))
        if result.config_rebuilt:
            rebuilt.append("mgvr.json: rebuilt from the parts' metadata")
        if result.missing:
            rebuilt.append(f"catalog: {result.missing} files it held are gone now: recorded as "
                           "missing (removed by a later index run, as any vanished file)")
        rebuilt += [f"skipped {reason}" for reason in result.skipped]
        catalog = layout.open_catalog()
    try:
        report = verify(layout, catalog, repair=repair)
    finally:
        catalog.close()
    report.repaired[:0] = rebuilt
    return report
