"""The fine store: per clip, its frame features (float16, n_frames x D) in Parquet parts.

A part is written to a temporary name and renamed when closed, so every part the catalog names
is complete and immutable. Rows are found by (part, row); small row groups keep a fetch of a
few clips from reading whole files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_SIZE = 64
FINE_SCHEMA = pa.schema([
    pa.field("clip_id", pa.int64(), nullable=False),
    pa.field("frame_times", pa.list_(pa.float32()), nullable=False),
    # n_frames x D values, row-major; float16 halves the store at no measurable recall cost.
    pa.field("features", pa.list_(pa.float16()), nullable=False),
    pa.field("coarse", pa.list_(pa.float32()), nullable=False),
])


@dataclass(frozen=True)
class FineRow:
    clip_id: int
    frame_times: np.ndarray  # (n,) float32 seconds from the start of the video
    features: np.ndarray  # (n, D) float16
    coarse: np.ndarray  # (D,) float32


class FinePartWriter:
    """Appends rows to one part; `close()` makes it visible under its final name."""

    def __init__(self, path: Path, metadata: dict[str, object]) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = FINE_SCHEMA.with_metadata({"mgvr": json.dumps(metadata, sort_keys=True)})
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.schema = schema
        self.rows = 0
        self._pending: list[FineRow] = []

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
        table = pa.table({
            "clip_id": pa.array([r.clip_id for r in rows], pa.int64()),
            "frame_times": pa.array([r.frame_times.astype(np.float32) for r in rows],
                                    pa.list_(pa.float32())),
            "features": pa.array([r.features.astype(np.float16).ravel() for r in rows],
                                 pa.list_(pa.float16())),
            "coarse": pa.array([r.coarse.astype(np.float32) for r in rows],
                               pa.list_(pa.float32())),
        }, schema=self.schema)
        self.writer.write_table(table, row_group_size=ROW_GROUP_SIZE)

    def close(self) -> None:
        self._flush()
        self.writer.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


class FineReader:
    """Reads chosen rows of parts, opening each part's footer once."""

    def __init__(self, fine_dir: Path, dim: int) -> None:
        self.fine_dir = fine_dir
        self.dim = dim
        self._files: dict[str, pq.ParquetFile] = {}

    def _file(self, part: str) -> pq.ParquetFile:
        if part not in self._files:
            self._files[part] = pq.ParquetFile(self.fine_dir / part)
        return self._files[part]

    def read(self, locations: list[tuple[str, int]]) -> list[FineRow]:
        """Rows at (part, row) locations, in the order asked."""
        by_part: dict[str, list[int]] = {}
        for part, row in locations:
            by_part.setdefault(part, []).append(row)
        found: dict[tuple[str, int], FineRow] = {}
        for part, rows in by_part.items():
            parquet = self._file(part)
            group_size = parquet.metadata.row_group(0).num_rows
            groups = sorted({row // group_size for row in rows})
            table = parquet.read_row_groups(groups)
            first_row = {group: i * group_size for i, group in enumerate(groups)}
            for row in rows:
                offset = first_row[row // group_size] + row % group_size
                found[(part, row)] = self._row(table, offset)
        return [found[location] for location in locations]

    def _row(self, table: pa.Table, offset: int) -> FineRow:
        frame_times = np.asarray(table.column("frame_times")[offset].values, dtype=np.float32)
        features = np.asarray(table.column("features")[offset].values.to_numpy(
            zero_copy_only=False), dtype=np.float16).reshape(len(frame_times), self.dim)
        coarse = np.asarray(table.column("coarse")[offset].values, dtype=np.float32)
        return FineRow(int(table.column("clip_id")[offset].as_py()), frame_times, features, coarse)

    def read_part(self, part: str) -> pa.Table:
        return self._file(part).read()
