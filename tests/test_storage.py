"""Real FAISS, Parquet and SQLite files on disk."""

import numpy as np
import pytest

from mgvr.storage.catalog import Catalog, NewClip, VideoUpdate
from mgvr.storage.coarse import CoarseIndex
from mgvr.storage.fine import ROW_GROUP_SIZE, FinePartWriter, FineReader, FineRow
from mgvr.storage.layout import IndexLayout, default_index_dir


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_faiss_top_k_equals_brute_force_after_removals_and_reload(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 2000, 48), _unit(rng, 20, 48)
    ids = np.arange(100, 2100, dtype=np.int64)
    index = CoarseIndex.empty(48)
    index.add(ids, vectors)
    removed = list(range(100, 2100, 7))
    assert index.remove(removed) == len(removed)
    index.save(tmp_path / "coarse-000001.faiss")
    loaded = CoarseIndex.load(tmp_path / "coarse-000001.faiss", 48)

    keep = ~np.isin(ids, removed)
    exact = queries @ vectors[keep].T
    expected_ids = ids[keep][np.argsort(-exact, axis=1)[:, :25]]
    scores, found = loaded.search(queries, 25)
    assert np.array_equal(found, expected_ids)
    assert np.allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :25], atol=1e-5)
    assert set(loaded.ids()) == set(ids[keep])


def test_search_on_small_index_returns_what_there_is():
    index = CoarseIndex.empty(8)
    scores, found = index.search(np.ones((1, 8), np.float32), 5)
    assert found.shape == (1, 0)
    index.add(np.array([3, 9]), np.eye(8, dtype=np.float32)[:2])
    scores, found = index.search(np.eye(8, dtype=np.float32)[1:2], 5)
    assert list(found[0]) == [9, 3]


def test_fine_rows_round_trip_across_row_groups(tmp_path):
    rng = np.random.default_rng(1)
    writer = FinePartWriter(tmp_path / "part-000001.parquet", {"dim": 32})
    rows = []
    for clip_id in range(ROW_GROUP_SIZE * 2 + 5):
        n = int(rng.integers(1, 13))
        row = FineRow(clip_id, np.arange(n, dtype=np.float32) * 0.5,
                      _unit(rng, n, 32).astype(np.float16), _unit(rng, 32))
        assert writer.append(row) == clip_id
        rows.append(row)
    assert not (tmp_path / "part-000001.parquet").exists()  # invisible until closed
    writer.close()
    assert not list(tmp_path.glob("*.tmp"))

    reader = FineReader(tmp_path, 32)
    wanted = [130, 2, 64, 63, 0, 132]
    got = reader.read([("part-000001.parquet", i) for i in wanted])
    for clip_id, row in zip(wanted, got, strict=True):
        assert row.clip_id == clip_id
        assert row.features.dtype == np.float16
        assert np.array_equal(row.features, rows[clip_id].features)
        assert np.array_equal(row.frame_times, rows[clip_id].frame_times)
        assert np.allclose(row.coarse, rows[clip_id].coarse)


def test_catalog_replaces_and_removes_files(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    clips = (NewClip(1, 0, 0.0, 5.0, 12, "part-000001.parquet", 0),
             NewClip(2, 1, 5.0, 10.0, 12, "part-000001.parquet", 1))
    with catalog.transaction():
        catalog.add_part("part-000001.parquet", 2)
        catalog.apply(VideoUpdate("/v/a.mp4", 10, 1, "indexed", clips))
        catalog.apply(VideoUpdate("/v/ab/b.mp4", 10, 1, "failed", reason="corrupt",
                                  error="bad"))
        catalog.apply(VideoUpdate("/vx/c.mp4", 10, 1, "failed", reason="corrupt", error="bad"))
        catalog.set_next_clip_id(3)
        catalog.set_generation(1)
    assert sorted(catalog.videos_under("/v")) == ["/v/a.mp4", "/v/ab/b.mp4"]  # not /vx
    assert catalog.clips_by_ids([2])[2].video_path == "/v/a.mp4"
    assert catalog.clip_ids_of("/v/a.mp4") == [1, 2]
    assert catalog.clip_ids_of("/v/none.mp4") is None
    with catalog.transaction():
        assert catalog.remove_video("/v/a.mp4") == [1, 2]
    assert catalog.clips_by_ids([1, 2]) == {}
    assert catalog.counts() == {"videos_indexed": 0, "videos_failed": 2, "clips": 0, "parts": 1}
    assert (catalog.generation(), catalog.next_clip_id()) == (1, 3)


def test_index_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MGVR_INDEX", str(tmp_path / "from-env"))
    assert default_index_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert default_index_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("MGVR_INDEX")
    assert "mgvr" in str(default_index_dir(None))
    layout = IndexLayout(tmp_path)
    layout.coarse(3).write_bytes(b"")
    layout.coarse(12).write_bytes(b"")
    assert layout.coarse_generations() == [3, 12]


@pytest.mark.parametrize("dim", [16])
def test_coarse_load_refuses_wrong_dimension(tmp_path, dim):
    from mgvr.errors import IncompatibleIndexError

    CoarseIndex.empty(dim).save(tmp_path / "c.faiss")
    with pytest.raises(IncompatibleIndexError, match="dims"):
        CoarseIndex.load(tmp_path / "c.faiss", dim * 2)
    (tmp_path / "broken.faiss").write_bytes(b"garbage")
    with pytest.raises(IncompatibleIndexError, match="unreadable"):
        CoarseIndex.load(tmp_path / "broken.faiss", dim)
