"""The fine store: per clip, its frame features (float16, n_frames x D) in Parquet parts, each
with a memory-mapped sidecar for fast random reads.

A part is written to a temporary name and renamed when closed, so every part the catalog names
is complete and immutable. Parquet (zstd) is the open, self-describing format: besides the
features, each row records its clip (video path, clip index, time range, the file's size,
mtime and content key, and a small WebP strip of the sampled frames), and the schema metadata
holds the index config, so a lost catalog can be rebuilt from the parts alone.

Next to each part, `<part stem>.rows.npy` holds the features uncompressed and padded to a fixed
width, with a CRC-32 per row, so a search reads its k candidates from the page cache with no
decompression and checks each row it uses. The sidecar is renamed into place before its Parquet
part, so a committed part always has a complete sidecar.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import mmap
import os
import resource
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mgvr.config import IndexConfig
from mgvr.errors import IndexDamagedError

ROW_GROUP_SIZE = 64
FINE_SCHEMA = pa.schema([
    pa.field("clip_id", pa.int64(), nullable=False),
    pa.field("frame_times", pa.list_(pa.float32()), nullable=False),
    # n_frames x D values, row-major; float16 halves the store at no measurable recall cost.
    pa.field("features", pa.list_(pa.float16()), nullable=False),
    pa.field("coarse", pa.list_(pa.float32()), nullable=False),
    # What the catalog knows of the clip, so the catalog can be rebuilt from the parts.
    pa.field("video_path", pa.binary(), nullable=False),  # the file system's bytes
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("video_size", pa.int64(), nullable=False),
    pa.field("video_mtime_ns", pa.int64(), nullable=False),
    pa.field("content_key", pa.string()),
    pa.field("duration_s", pa.float64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    # One image (WebP) holding the sampled frames side by side (empty when none were stored).
    pa.field("thumbnails", pa.binary(), nullable=False),
])
CLIP_COLUMNS = ["clip_id", "frame_times", "video_path", "clip_index", "start_s", "end_s",
                "video_size", "video_mtime_ns", "content_key", "duration_s", "width", "height"]
SIDECAR_SUFFIX = ".rows.npy"
# A fixed-size .npy header lets rows stream to disk before their count is known, and puts the
# first record on a page boundary.
SIDECAR_HEADER_BYTES = 4096
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_CRC_SKIP = slice(12, 16)  # the crc32 field itself, inside each record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipInfo:
    """The clip a fine row belongs to, as the catalog records it."""

    video_path: str
    clip_index: int
    start_s: float
    end_s: float
    video_size: int
    video_mtime_ns: int
    content_key: str | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FineRow:
    clip_id: int
    frame_times: np.ndarray  # (n,) float32 seconds from the start of the video
    features: np.ndarray  # (n, D) float16
    coarse: np.ndarray  # (D,) float32
    clip: ClipInfo | None = None  # always set when written; None when read back for search
    thumbnails: bytes = b""  # sprite of the sampled frames (indexer.thumbnails)


@dataclass(frozen=True)
class FineBatch:
    """Rows of several clips padded to one width F (the widest row asked for)."""

    clip_ids: np.ndarray  # (N,) int64
    n_frames: np.ndarray  # (N,) int32: real frames; the rest of each row is padding
    frame_times: np.ndarray  # (N, F) float32, NaN where padded
    features: np.ndarray  # (N, F, D) float16, zero where padded
    coarse: np.ndarray  # (N, D) float32

    def rows(self) -> list[FineRow]:
        return [FineRow(int(self.clip_ids[i]), self.frame_times[i, :n].copy(),
                        self.features[i, :n].copy(), self.coarse[i].copy())
                for i, n in enumerate(self.n_frames.tolist())]


def sidecar_path(part_path: Path) -> Path:
    """`fine/part-000001.parquet` -> `fine/part-000001.rows.npy` (named by the part's stem)."""
    return part_path.with_name(part_path.stem + SIDECAR_SUFFIX)


def sidecar_dtype(width: int, dim: int) -> np.dtype:
    """One packed record per clip: a structured .npy that any numpy can open."""
    return np.dtype([("clip_id", "<i8"), ("n_frames", "<i4"), ("crc32", "<u4"),
                     ("frame_times", "<f4", (width,)), ("coarse", "<f4", (dim,)),
                     ("features", "<f2", (width, dim))])


def record_crc(record_bytes: bytes | memoryview) -> int:
    """CRC-32 of one sidecar record, its own crc32 field left out."""
    view = memoryview(record_bytes)
    return zlib.crc32(view[_CRC_SKIP.stop:], zlib.crc32(view[:_CRC_SKIP.start]))


def bad_records(records: np.ndarray) -> np.ndarray:
    """Positions of (N,) sidecar records whose CRC does not match their bytes."""
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), -1)
    return np.array([i for i in range(len(records))
                     if record_crc(raw[i].data) != int(records["crc32"][i])], np.int64)


def _sidecar_header(dtype: np.dtype, rows: int) -> bytes:
    """A standard .npy (version 1.0) header padded to exactly SIDECAR_HEADER_BYTES."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (rows,)}).encode("latin1")
    body = SIDECAR_HEADER_BYTES - len(_NPY_MAGIC) - 2
    if len(text) + 1 > body:
        raise ValueError(f"sidecar header of {len(text)} bytes does not fit")
    return _NPY_MAGIC + struct.pack("<H", body) + text + b" " * (body - len(text) - 1) + b"\n"


def _records(rows: list[FineRow], dtype: np.dtype) -> np.ndarray:
    """Rows -> (N,) sidecar records of `dtype`, padded to its width, CRCs filled in."""
    records = np.zeros(len(rows), dtype)
    records["frame_times"] = np.nan
    for i, row in enumerate(rows):
        n = len(row.frame_times)
        records["clip_id"][i] = row.clip_id
        records["n_frames"][i] = n
        records["frame_times"][i, :n] = row.frame_times
        records["coarse"][i] = row.coarse
        records["features"][i, :n] = row.features
    raw = records.view(np.uint8).reshape(len(rows), -1)
    records["crc32"] = [record_crc(raw[i].data) for i in range(len(rows))]
    return records


class _SidecarWriter:
    """Streams fixed-width records after a reserved header; widens the file if a row needs it."""

    def __init__(self, path: Path, width: int, dim: int) -> None:
        self.tmp = path.with_name(path.name + ".tmp")
        self.path = path
        self.width = width
        self.dim = dim
        self.dtype: np.dtype | None = None
        self.rows = 0
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (open until close() or abort())
        self.file.write(bytes(SIDECAR_HEADER_BYTES))

    def write(self, rows: list[FineRow]) -> None:
        widest = max(len(row.frame_times) for row in rows)
        if self.dtype is None:
            self.width = max(self.width, widest)
            self.dtype = sidecar_dtype(self.width, rows[0].features.shape[1])
        elif widest > self.width:
            self._widen(widest)
        self.file.write(_records(rows, self.dtype).tobytes())
        self.rows += len(rows)

    def _widen(self, width: int) -> None:
        """Rare: a row with more frames than the first ones. Rewrite what is there, wider."""
        self.file.flush()
        old = np.fromfile(self.tmp, self.dtype, count=self.rows, offset=SIDECAR_HEADER_BYTES)
        rows = [FineRow(int(r["clip_id"]), r["frame_times"][:r["n_frames"]],
                        r["features"][:r["n_frames"]], r["coarse"]) for r in old]
        self.dtype = sidecar_dtype(width, old.dtype["coarse"].shape[0])
        self.file.seek(SIDECAR_HEADER_BYTES)
        self.file.truncate()
        self.file.write(_records(rows, self.dtype).tobytes())
        self.width = width

    def close(self) -> None:
        """Write the header, fsync, rename into place."""
        dtype = self.dtype or sidecar_dtype(self.width, self.dim)
        self.file.seek(0)
        self.file.write(_sidecar_header(dtype, self.rows))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def _table(rows: list[FineRow], schema: pa.Schema) -> pa.Table:
    clips = [row.clip for row in rows]
    if any(clip is None for clip in clips):
        raise ValueError("every written fine row needs its ClipInfo")
    return pa.table({
        "clip_id": pa.array([r.clip_id for r in rows], pa.int64()),
        "frame_times": pa.array([r.frame_times.astype(np.float32) for r in rows],
                                pa.list_(pa.float32())),
        "features": pa.array([r.features.astype(np.float16).ravel() for r in rows],
                             pa.list_(pa.float16())),
        "coarse": pa.array([r.coarse.astype(np.float32) for r in rows], pa.list_(pa.float32())),
        "video_path": pa.array([os.fsencode(c.video_path) for c in clips], pa.binary()),
        "clip_index": pa.array([c.clip_index for c in clips], pa.int32()),
        "start_s": pa.array([c.start_s for c in clips], pa.float64()),
        "end_s": pa.array([c.end_s for c in clips], pa.float64()),
        "video_size": pa.array([c.video_size for c in clips], pa.int64()),
        "video_mtime_ns": pa.array([c.video_mtime_ns for c in clips], pa.int64()),
        "content_key": pa.array([c.content_key for c in clips], pa.string()),
        "duration_s": pa.array([c.duration_s for c in clips], pa.float64()),
        "width": pa.array([c.width for c in clips], pa.int32()),
        "height": pa.array([c.height for c in clips], pa.int32()),
        "thumbnails": pa.array([r.thumbnails for r in rows], pa.binary()),
    }, schema=schema)


class FinePartWriter:
    """Appends rows to one part; `close()` makes it visible under its final name.

    `metadata["frames_per_clip"]`, when given, fixes the sidecar's row width from the start.
    """

    def __init__(self, path: Path, metadata: dict[str, object]) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = FINE_SCHEMA.with_metadata({"mgvr": json.dumps(metadata, sort_keys=True)})
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd",
                                       use_dictionary=["video_path", "content_key"],
                                       write_page_checksum=True)
        self.sidecar = _SidecarWriter(sidecar_path(path), int(metadata.get("frames_per_clip", 0)),
                                      int(metadata.get("dim", 0)))
        self.schema = schema
        self.rows = 0
        self._pending: list[FineRow] = []

    @property
    def files(self) -> list[Path]:
        """The part's files once closed: sidecar and Parquet part."""
        return [self.sidecar.path, self.path]

    def append(self, row: FineRow) -> int:
        """Queue one row; returns its row number within the part."""
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= ROW_GROUP_SIZE:
            self._flush()
        return self.rows - 1

    def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self.writer.write_table(_table(rows, self.schema), row_group_size=ROW_GROUP_SIZE)
        self.sidecar.write(rows)

    def close(self) -> None:
        """Sidecar first, then the Parquet part: a visible part always has its sidecar."""
        self._flush()
        self.writer.close()
        self.sidecar.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        self.tmp.replace(self.path)

    def abort(self) -> None:
        """Drop the unfinished part (closing may fail again on a full disk: the files go
        anyway)."""
        with contextlib.suppress(OSError):
            self.writer.close()
        self.tmp.unlink(missing_ok=True)
        self.sidecar.abort()


def open_part(path: Path) -> pq.ParquetFile:
    """A Parquet part whose pages are checked against their CRCs as they are read (a damaged
    page raises instead of decoding into other numbers)."""
    return pq.ParquetFile(path, page_checksum_verification=True)


def read_part_columns(path: Path, columns: list[str]) -> pa.Table:
    return open_part(path).read(columns=columns)


def read_part_coarse(path: Path, rows: np.ndarray) -> np.ndarray:
    """(N, D) float32 coarse vectors of these rows of a part, from Parquet (page-checked)."""
    column = read_part_columns(path, ["coarse"]).column("coarse")
    return np.stack([np.asarray(column[int(row)].values, np.float32) for row in rows])


def part_metadata(config: IndexConfig) -> dict[str, object]:
    """What every Parquet part records about the model and shape of its rows, with the whole
    index config (so a lost mgvr.json can be rebuilt from any part)."""
    return {"model": config.model.describe(), "weights_sha256": config.model.weights_sha256,
            "dim": config.model.embed_dim, "frames_per_clip": config.frames_per_clip,
            "index_config": config.as_dict()}


def read_part_metadata(path: Path) -> dict[str, object]:
    """The `mgvr` schema metadata of a part (see part_metadata), plus the catalog id it was
    written for."""
    metadata = pq.read_schema(path).metadata or {}
    if b"mgvr" not in metadata:
        raise ValueError("no mgvr metadata")
    return json.loads(metadata[b"mgvr"])


def _row_from_table(table: pa.Table, offset: int, dim: int, full: bool) -> FineRow:
    frame_times = np.asarray(table.column("frame_times")[offset].values, dtype=np.float32)
    features = np.asarray(table.column("features")[offset].values.to_numpy(
        zero_copy_only=False), dtype=np.float16).reshape(len(frame_times), dim)
    coarse = np.asarray(table.column("coarse")[offset].values, dtype=np.float32)
    clip_id = int(table.column("clip_id")[offset].as_py())
    if not full:
        return FineRow(clip_id, frame_times, features, coarse)
    value = {name: table.column(name)[offset].as_py() for name in CLIP_COLUMNS[2:]}
    value["video_path"] = os.fsdecode(value["video_path"])
    return FineRow(clip_id, frame_times, features, coarse, ClipInfo(**value),
                   table.column("thumbnails")[offset].as_py())


def iter_part_rows(path: Path, dim: int) -> Iterator[FineRow]:
    """Every row of a part with its ClipInfo and thumbnails, one row group at a time."""
    parquet = open_part(path)
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        for offset in range(table.num_rows):
            yield _row_from_table(table, offset, dim, full=True)


def write_sidecar(part_path: Path, dim: int, frames_per_clip: int = 0) -> Path:
    """(Re)write the sidecar of a closed part from its Parquet rows, one row group at a time;
    atomic like the writer's."""
    parquet = open_part(part_path)
    sidecar = _SidecarWriter(sidecar_path(part_path), frames_per_clip, dim)
    try:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["clip_id", "frame_times", "features",
                                                           "coarse"])
            sidecar.write([_row_from_table(table, offset, dim, full=False)
                           for offset in range(table.num_rows)])
    except BaseException:
        sidecar.abort()
        raise
    sidecar.close()
    return sidecar.path


@functools.cache
def open_files_budget() -> int:
    """How many sidecars may stay mapped (each mapping holds a file descriptor).

    Raises the soft RLIMIT_NOFILE to the hard limit once: a large index has thousands of parts.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(64, min(16384, soft // 2))


def _read_sidecar_header(f) -> tuple[int, int, np.dtype]:
    """(offset of the first record, records, record dtype) of an open sidecar file, checked
    to fit in the file and to carry per-row checksums."""
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    offset = f.tell()
    size = os.fstat(f.fileno()).st_size
    if len(shape) != 1 or size < offset + shape[0] * dtype.itemsize:
        raise ValueError(f"{shape} records of {dtype.itemsize} bytes do not fit in {size} bytes")
    if "crc32" not in (dtype.names or ()):
        raise ValueError("no per-row checksums (written by an older mgvr)")
    return offset, shape[0], dtype


class MappedSidecar:
    """A sidecar's records as a read-only array over one mmap of the file."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.offset, rows, dtype = _read_sidecar_header(f)
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.records = np.frombuffer(self.map, dtype, count=rows, offset=self.offset)

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading these rows now: the reads of all candidates then
        overlap instead of each waiting for the previous one's page fault (measured at 1M clips
        with the sidecars out of the page cache: fetch p50 114 ms one by one, 3.5 ms so)."""
        itemsize = self.records.dtype.itemsize
        for row in rows.tolist():
            start = self.offset + row * itemsize
            aligned = start - start % mmap.PAGESIZE
            self.map.madvise(mmap.MADV_WILLNEED, aligned, start - aligned + itemsize)


class SidecarFile:
    """One field of chosen rows of a sidecar, read with pread: for walks over many rows of many
    parts, which a mapping would leave resident (each page fault maps its neighbours too), and
    whose random reads want no readahead. Use as a context manager, or close()."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)  # one descriptor for the header and the rows
        try:
            with open(self.fd, "rb", closefd=False) as f:
                self.offset, self.rows, self.dtype = _read_sidecar_header(f)
        except BaseException:
            os.close(self.fd)
            raise
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.path = path

    def __enter__(self) -> SidecarFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        os.close(self.fd)

    def read_field(self, name: str, rows: np.ndarray) -> np.ndarray:
        """(N, *shape) values of field `name` of these rows."""
        field_dtype, field_offset = self.dtype.fields[name][:2]
        out = np.empty(len(rows), field_dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise ValueError(f"{self.path}: has {self.rows} rows, row {rows.max()} asked")
        start = self.offset + field_offset
        for i, row in enumerate(rows.tolist()):
            target = out[i:i + 1].view(np.uint8)
            if os.preadv(self.fd, [target], start + row * self.dtype.itemsize) != target.size:
                raise ValueError(f"{self.path}: ends inside row {row}")
        return out


class FineReader:
    """Reads chosen rows of parts: from the mapped sidecar when there is one, else Parquet.

    Safe to share between threads: the caches are guarded, the reads of mapped rows are not.
    """

    def __init__(self, fine_dir: Path, dim: int) -> None:
        self.fine_dir = fine_dir
        self.dim = dim
        self._lock = threading.Lock()
        # part -> (its mapped sidecar or None for none, the sidecar's sha256 when mapped)
        self._mapped: OrderedDict[str, tuple[MappedSidecar | None, str | None]] = OrderedDict()
        self._expected: dict[str, str] = {}
        self._max_mapped = open_files_budget()

    def keep_only(self, sidecars: dict[str, str]) -> None:
        """A new generation: part -> sidecar sha256 of the parts it names. Mappings of other
        parts (compacted away: their space is freed) and of sidecars since rebuilt under the
        same name (a repair) are dropped."""
        with self._lock:
            self._expected = dict(sidecars)
            for part, (_, sha) in list(self._mapped.items()):
                if sidecars.get(part) != sha:
                    del self._mapped[part]

    def _sidecar(self, part: str) -> MappedSidecar | None:
        """The part's mapped sidecar (LRU-cached); None when it has no usable sidecar."""
        with self._lock:
            if part in self._mapped:
                self._mapped.move_to_end(part)
                return self._mapped[part][0]
            sha = self._expected.get(part)
        path = sidecar_path(self.fine_dir / part)
        try:
            mapped: MappedSidecar | None = MappedSidecar(path)
        except FileNotFoundError:
            mapped = None
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable sidecar (%s); reading %s from Parquet", path, e, part)
            return None  # not remembered: a passing error should not stick
        if mapped is not None:
            shape = mapped.records.dtype["features"].shape[1:]
            if shape != (self.dim,):
                log.warning("%s: sidecar is not %d-dimensional; reading %s from Parquet", path,
                            self.dim, part)
                mapped = None
        with self._lock:
            self._mapped[part] = (mapped, sha)
            if len(self._mapped) > self._max_mapped:
                self._mapped.popitem(last=False)
        return mapped

    def read(self, locations: list[tuple[str, int]]) -> list[FineRow]:
        """Rows at (part, row) locations, in the order asked."""
        return self.read_batch(locations).rows()

    def read_batch(self, locations: list[tuple[str, int]]) -> FineBatch:
        """Rows at (part, row) locations, in the order asked, padded into one batch.

        Every row read from a sidecar is checked against its CRC: a damaged row raises
        IndexDamagedError instead of silently changing a ranking."""
        by_part: dict[str, list[int]] = {}
        for i, (part, _) in enumerate(locations):
            by_part.setdefault(part, []).append(i)
        plans = []
        for part, positions in by_part.items():
            rows = np.asarray([locations[i][1] for i in positions], np.int64)
            mapped = self._sidecar(part)
            if mapped is not None:
                mapped.prefetch(rows)  # every part's reads start before the first copy waits
            plans.append((part, np.asarray(positions), rows, mapped))
        pieces = []
        for part, positions, rows, mapped in plans:
            if mapped is None:
                pieces.append((positions, self._parquet_records(part, rows.tolist())))
                continue
            if len(rows) and rows.max() >= len(mapped.records):
                raise IndexDamagedError(f"{sidecar_path(self.fine_dir / part)}: has "
                                        f"{len(mapped.records)} rows, row {rows.max()} asked; "
                                        "run `mgvr verify --repair`")
            picked = mapped.records[rows]
            damaged = bad_records(picked)
            if len(damaged):
                raise IndexDamagedError(
                    f"{sidecar_path(self.fine_dir / part)}: row {rows[damaged[0]]} fails its "
                    "checksum; run `mgvr verify --repair` (it rebuilds the file from its "
                    "Parquet part)")
            pieces.append((positions, picked))
        width = max((p.dtype["frame_times"].shape[0] for _, p in pieces), default=0)
        n = len(locations)
        batch = FineBatch(np.zeros(n, np.int64), np.zeros(n, np.int32),
                          np.full((n, width), np.nan, np.float32),
                          np.zeros((n, width, self.dim), np.float16),
                          np.zeros((n, self.dim), np.float32))
        for positions, picked in pieces:
            w = picked.dtype["frame_times"].shape[0]
            batch.clip_ids[positions] = picked["clip_id"]
            batch.n_frames[positions] = picked["n_frames"]
            batch.coarse[positions] = picked["coarse"]
            batch.frame_times[positions, :w] = picked["frame_times"]
            batch.features[positions, :w] = picked["features"]
        return batch

    def read_coarse(self, locations: list[tuple[str, int]]) -> np.ndarray:
        """(N, D) float32 coarse vectors at (part, row) locations, CRC-checked like
        read_batch (merges build new segments from these exact copies, not from quantised
        FAISS codes)."""
        return self.read_batch(locations).coarse

    def _row_groups(self, part: str, rows: list[int], columns: list[str]
                    ) -> tuple[pa.Table, dict[int, int]]:
        """The row groups holding `rows`, and each row's offset in the returned table."""
        parquet = open_part(self.fine_dir / part)
        group_size = parquet.metadata.row_group(0).num_rows
        groups = sorted({row // group_size for row in rows})
        table = parquet.read_row_groups(groups, columns=columns)
        first_row = {group: i * group_size for i, group in enumerate(groups)}
        return table, {row: first_row[row // group_size] + row % group_size for row in rows}

    def _parquet_records(self, part: str, rows: list[int]) -> np.ndarray:
        """Rows of a part without a usable sidecar: decode only the row groups holding them."""
        table, offsets = self._row_groups(part, rows, ["clip_id", "frame_times", "features",
                                                       "coarse"])
        found = [_row_from_table(table, offsets[row], self.dim, full=False) for row in rows]
        return _records(found, sidecar_dtype(max(len(r.frame_times) for r in found), self.dim))

    def read_thumbnails(self, part: str, row: int) -> bytes:
        """The sprite of one row's sampled frames (empty if none was stored)."""
        table, offsets = self._row_groups(part, [row], ["thumbnails"])
        return table.column("thumbnails")[offsets[row]].as_py()
