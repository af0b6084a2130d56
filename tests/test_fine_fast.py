"""The fine store's fast path: memory-mapped sidecars next to real Parquet parts on disk, checked
row for row against what Parquet holds."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import SyntheticSpace, write_index

from mgvr.config import ModelIdentity
from mgvr.errors import MgvrError
from mgvr.retriever.search import Retriever
from mgvr.storage.fine import (
    ROW_GROUP_SIZE,
    SIDECAR_SUFFIX,
    ClipInfo,
    FinePartWriter,
    FineReader,
    FineRow,
    sidecar_path,
    write_sidecar,
)

DIM = 16


def _row(rng, clip_id: int, frames: int) -> FineRow:
    features = rng.standard_normal((frames, DIM)).astype(np.float16)
    return FineRow(clip_id, (np.arange(frames, dtype=np.float32) + rng.random()) * 1.5,
                   features, rng.standard_normal(DIM).astype(np.float32),
                   ClipInfo(f"/v/{clip_id}.mp4", 0, 0.0, 1.0, 10, 1))


def _write_part(folder: Path, number: int, rows: list[FineRow],
                metadata: dict | None = None) -> str:
    name = f"part-{number:06d}.parquet"
    writer = FinePartWriter(folder / name, metadata or {"dim": DIM})
    for row in rows:
        writer.append(row)
    writer.close()
    return name


def _parquet_only(folder: Path) -> FineReader:
    reader = FineReader(folder, DIM)
    reader._sidecar = lambda part: None  # the reference: every row decoded from Parquet
    return reader


def _assert_batches_equal(fast, slow) -> None:
    for name in ("clip_ids", "n_frames", "features", "coarse"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert np.array_equal(fast.frame_times, slow.frame_times, equal_nan=True)


@pytest.fixture
def parts(tmp_path):
    """Three parts with rows of 1 to 12 frames, spanning several row groups; part 2's first row
    group has 3 frames per row, so the later, wider rows make its sidecar grow."""
    rng = np.random.default_rng(3)
    rows, names, clip_id = {}, [], 1
    for number, count in [(1, ROW_GROUP_SIZE * 2 + 9), (2, ROW_GROUP_SIZE + 20), (3, 1)]:
        part_rows = []
        for i in range(count):
            frames = 3 if (number == 2 and i < ROW_GROUP_SIZE) else int(rng.integers(4, 13))
            part_rows.append(_row(rng, clip_id, frames))
            clip_id += 1
        names.append(_write_part(tmp_path, number, part_rows))
        rows.update({(names[-1], i): row for i, row in enumerate(part_rows)})
    return tmp_path, names, rows


def test_sidecar_is_a_plain_npy_named_by_the_part_stem(parts):
    folder, names, rows = parts
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*names, *(n.replace(".parquet", SIDECAR_SUFFIX) for n in names)])
    records = np.load(folder / "part-000001.rows.npy", mmap_mode="r")
    assert len(records) == ROW_GROUP_SIZE * 2 + 9
    assert records.offset % 4096 == 0  # records start on a page boundary
    second = rows[("part-000002.parquet", 0)]
    widened = np.load(folder / "part-000002.rows.npy")
    assert widened.dtype["features"].shape[0] == widened["n_frames"].max() > 3
    assert np.array_equal(widened["features"][0, :3], second.features)
    assert not widened["features"][0, 3:].any() and np.isnan(widened["frame_times"][0, 3:]).all()


def test_mapped_reads_equal_parquet_reads_exactly(parts):
    folder, names, rows = parts
    rng = np.random.default_rng(5)
    locations = [list(rows)[i] for i in rng.choice(len(rows), 60, replace=True)]
    locations += [("part-000003.parquet", 0), ("part-000001.parquet", 0)]
    fast = FineReader(folder, DIM).read_batch(locations)
    _assert_batches_equal(fast, _parquet_only(folder).read_batch(locations))
    for location, row in zip(locations, FineReader(folder, DIM).read(locations), strict=True):
        expected = rows[location]
        assert row.clip_id == expected.clip_id and row.features.dtype == np.float16
        assert np.array_equal(row.features, expected.features)
        assert np.array_equal(row.frame_times, expected.frame_times)
        assert np.array_equal(row.coarse, expected.coarse)


def test_missing_or_broken_sidecar_falls_back_to_parquet(parts, caplog):
    folder, names, rows = parts
    locations = list(rows)[::7]
    expected = _parquet_only(folder).read_batch(locations)
    sidecar_path(folder / names[0]).unlink()  # an index written before sidecars existed
    broken = sidecar_path(folder / names[1])
    broken.write_bytes(broken.read_bytes()[:5000])  # truncated
    with caplog.at_level(logging.WARNING):
        _assert_batches_equal(FineReader(folder, DIM).read_batch(locations), expected)
    assert "unreadable sidecar" in caplog.text and names[1] in caplog.text


def test_fixed_width_from_metadata_and_empty_batch(tmp_path):
    rng = np.random.default_rng(1)
    name = _write_part(tmp_path, 1, [_row(rng, 7, 2)], {"dim": DIM, "frames_per_clip": 12})
    assert np.load(sidecar_path(tmp_path / name))["features"].shape == (1, 12, DIM)
    batch = FineReader(tmp_path, DIM).read_batch([])
    assert batch.features.shape == (0, 0, DIM) and batch.rows() == []


def test_sidecar_is_renamed_before_its_part_and_abort_leaves_nothing(tmp_path, monkeypatch):
    renamed = []
    original = Path.replace

    def recording_replace(self, target):
        renamed.append(Path(target).name)
        return original(self, target)

    monkeypatch.setattr(Path, "replace", recording_replace)
    rng = np.random.default_rng(2)
    _write_part(tmp_path, 1, [_row(rng, 1, 4)])
    assert renamed == ["part-000001.rows.npy", "part-000001.parquet"]

    writer = FinePartWriter(tmp_path / "part-000002.parquet", {"dim": DIM})
    for i in range(ROW_GROUP_SIZE + 1):
        writer.append(_row(rng, 10 + i, 4))
    assert not sidecar_path(tmp_path / "part-000002.parquet").exists()  # invisible until closed
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000001.parquet",
                                                          "part-000001.rows.npy"]


def test_sidecar_of_an_older_part_can_be_written_from_parquet(parts):
    folder, names, rows = parts
    original = sidecar_path(folder / names[0]).read_bytes()
    sidecar_path(folder / names[0]).unlink()
    assert write_sidecar(folder / names[0], DIM) == sidecar_path(folder / names[0])
    assert sidecar_path(folder / names[0]).read_bytes() == original


def test_search_through_sidecars_equals_search_through_parquet(tmp_path):
    """Whole searches (no model needed for a given query vector) on a synthetic index: with
    sidecars, without them (an older index), and with a sidecar that holds other clips."""
    identity = ModelIdentity("synthetic", "none", "0" * 64, DIM, 64, 77)
    space = SyntheticSpace.make(DIM, 20, rank=8)
    write_index(tmp_path / "index", identity, 2500, 5, space, part_rows=400)
    queries = [torch.from_numpy(q) for q in space.queries(5, np.random.default_rng(3))]

    def hits(index):
        retriever = Retriever(index, device="cpu")
        return [retriever.search_vector(q, 20, 50, True, {}) for q in queries]

    fast = hits(tmp_path / "index")
    older = shutil.copytree(tmp_path / "index", tmp_path / "older")
    for sidecar in (older / "fine").glob(f"*{SIDECAR_SUFFIX}"):
        sidecar.unlink()
    assert hits(older) == fast

    fine = tmp_path / "index" / "fine"
    shutil.copy(fine / "part-000001.rows.npy", fine / "part-000002.rows.npy")
    with pytest.raises(MgvrError, match="fine rows do not hold the clips"):
        hits(tmp_path / "index")
