"""Real Parquet, SQLite and FAISS files on disk: the fine store, the catalog, the commit."""

import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mgvr.errors import IndexDamagedError
from mgvr.storage.catalog import Catalog, NewClip, SegmentRecord, VideoUpdate
from mgvr.storage.commit import Commit
from mgvr.storage.fine import (
    ROW_GROUP_SIZE,
    ClipInfo,
    FinePartWriter,
    FineReader,
    FineRow,
    iter_part_rows,
    sidecar_path,
)
from mgvr.storage.layout import IndexLayout, default_index_dir
from mgvr.storage.orphans import remove_orphans, unregistered_files


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _row(rng, clip_id, n, dim=32, path="/v/a.mp4"):
    return FineRow(clip_id, np.arange(n, dtype=np.float32) * 0.5,
                   _unit(rng, n, dim).astype(np.float16), _unit(rng, dim),
                   ClipInfo(path, clip_id, 0.0, 5.0, 100, 7, "key", 5.0, 64, 48),
                   b"jpeg-bytes" * n)


def test_fine_rows_round_trip_across_row_groups_with_their_clip_info(tmp_path):
    rng = np.random.default_rng(1)
    writer = FinePartWriter(tmp_path / "part-000001.parquet", {"dim": 32})
    rows = []
    for clip_id in range(ROW_GROUP_SIZE * 2 + 5):
        row = _row(rng, clip_id, int(rng.integers(1, 13)),
                   path=os.fsdecode(b"/v/bad\xff name.mp4"))
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
        assert np.array_equal(row.features, rows[clip_id].features)
        assert np.array_equal(row.frame_times, rows[clip_id].frame_times)
        assert np.allclose(row.coarse, rows[clip_id].coarse)
    back = list(iter_part_rows(tmp_path / "part-000001.parquet", 32))
    assert [r.clip for r in back] == [r.clip for r in rows]  # the non-UTF-8 path exactly
    assert back[3].thumbnails == rows[3].thumbnails
    assert reader.read_thumbnails("part-000001.parquet", 70) == rows[70].thumbnails


def test_a_damaged_sidecar_row_is_refused_not_used(tmp_path):
    rng = np.random.default_rng(2)
    writer = FinePartWriter(tmp_path / "part-000001.parquet", {"dim": 32, "frames_per_clip": 4})
    for clip_id in range(10):
        writer.append(_row(rng, clip_id, 4))
    writer.close()
    sidecar = sidecar_path(tmp_path / "part-000001.parquet")
    data = bytearray(sidecar.read_bytes())
    data[-100] ^= 0x40  # one feature byte of the last row
    sidecar.write_bytes(bytes(data))
    reader = FineReader(tmp_path, 32)
    assert len(reader.read([("part-000001.parquet", 3)])) == 1  # an intact row still reads
    with pytest.raises(IndexDamagedError, match="row 9 fails its checksum"):
        reader.read([("part-000001.parquet", 3), ("part-000001.parquet", 9)])


def _catalog_with_clips(tmp_path):
    catalog = Catalog.create(tmp_path / "catalog.sqlite")
    clips = (NewClip(1, 0, 0.0, 5.0, 12, "part-000001.parquet", 0, "seg-000001.faiss"),
             NewClip(2, 1, 5.0, 10.0, 12, "part-000001.parquet", 1, "seg-000001.faiss"))
    with catalog.transaction():
        catalog.add_part("part-000001.parquet", 2)
        catalog.add_segment(SegmentRecord("seg-000001.faiss", "flat", 2, None, None, None))
        catalog.apply(VideoUpdate("/v/a.mp4", 10, 1, "indexed", clips))
        catalog.apply(VideoUpdate("/v/ab/b.mp4", 10, 1, "failed", reason="corrupt",
                                  error="bad"))
        catalog.apply(VideoUpdate("/vx/c.mp4", 10, 1, "failed", reason="corrupt", error="bad"))
        catalog.set_next_clip_id(3)
        catalog.set_generation(1)
    return catalog


def test_catalog_removals_become_tombstones_of_their_segment(tmp_path):
    catalog = _catalog_with_clips(tmp_path)
    assert sorted(catalog.videos_under("/v")) == ["/v/a.mp4", "/v/ab/b.mp4"]  # not /vx
    assert catalog.clips_by_ids([2])[2].video_path == "/v/a.mp4"
    assert catalog.clip_ids_of("/v/a.mp4") == [1, 2]
    assert catalog.clip_ids_of("/v/none.mp4") is None
    with catalog.transaction():
        assert catalog.remove_video("/v/a.mp4") == [1, 2]
    assert catalog.clips_by_ids([1, 2]) == {}
    assert catalog.tombstones("seg-000001.faiss") == [1, 2]
    counts = catalog.counts()
    assert (counts["videos_indexed"], counts["videos_failed"], counts["clips"],
            counts["tombstones"]) == (0, 2, 0, 2)
    with catalog.transaction():
        catalog.remove_segments(["seg-000001.faiss"])  # a merge replaced it
    assert catalog.tombstones() == []
    assert (catalog.generation(), catalog.next_clip_id()) == (1, 3)


def test_a_missing_empty_or_garbage_catalog_is_damage_not_an_empty_index(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with pytest.raises(IndexDamagedError, match="missing"):
        Catalog(path)
    path.write_bytes(b"")
    with pytest.raises(IndexDamagedError, match="empty file.*verify --repair"):
        Catalog(path)
    path.write_bytes(os.urandom(8192))
    with pytest.raises(IndexDamagedError, match="not a readable mgvr catalog"):
        Catalog(path)
    path.unlink()
    sqlite3.connect(path).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(IndexDamagedError, match="not a readable mgvr catalog"):
        Catalog(path)


def test_a_read_only_catalog_can_be_read(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    _catalog_with_clips(folder).close()
    os.chmod(folder / "catalog.sqlite", 0o444)
    os.chmod(folder, 0o555)
    try:
        catalog = Catalog(folder / "catalog.sqlite")
        assert catalog.clip_ids_of("/v/a.mp4") == [1, 2]
        assert sorted(p.name for p in folder.iterdir()) == ["catalog.sqlite"]  # no -shm/-wal
    finally:
        os.chmod(folder, 0o755)


def test_a_commit_is_all_or_nothing_and_leaves_only_orphans_when_aborted(tmp_path):
    layout = IndexLayout(tmp_path)
    catalog = Catalog.create(layout.catalog)
    rng = np.random.default_rng(3)
    with pytest.raises(RuntimeError), Commit(layout, catalog) as commit:
        name, writer = commit.new_part({"dim": 32})
        writer.append(_row(rng, 1, 3))
        commit.add_part(name, writer)
        commit.add_segment(np.array([1]), _unit(rng, 1, 32))
        raise RuntimeError("an error before apply(): nothing registered, files removed")
    assert catalog.generation() == 0 and not layout.data_files()

    commit = Commit(layout, catalog)
    name, writer = commit.new_part({"dim": 32})
    writer.append(_row(rng, 1, 3))
    commit.add_part(name, writer)
    record = commit.add_segment(np.array([1]), _unit(rng, 1, 32))
    # Killed here: files on disk, catalog untouched; they are this catalog's orphans.
    assert catalog.generation() == 0
    orphans, foreign = unregistered_files(layout, catalog)
    assert {p.name for p in orphans} == {name, "part-000001.rows.npy", record.name}
    assert foreign == []
    assert len(remove_orphans(layout, catalog)) == 3 and not layout.data_files()


def test_parts_of_another_catalog_are_kept_not_deleted_as_orphans(tmp_path):
    layout = IndexLayout(tmp_path)
    catalog = Catalog.create(layout.catalog)
    rng = np.random.default_rng(4)
    commit = Commit(layout, catalog)
    name, writer = commit.new_part({"dim": 32})
    writer.append(_row(rng, 1, 3))
    commit.add_part(name, writer)
    commit.apply()
    catalog.close()
    layout.catalog.unlink()  # the catalog is replaced by a new, empty one
    fresh = Catalog.create(layout.catalog)
    orphans, foreign = unregistered_files(layout, fresh)
    assert orphans == [] and {p.name for p in foreign} == {name, "part-000001.rows.npy"}
    remove_orphans(layout, fresh)
    assert (tmp_path / "fine" / name).is_file()


def test_index_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MGVR_INDEX", str(tmp_path / "from-env"))
    assert default_index_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert default_index_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("MGVR_INDEX")
    assert "mgvr" in str(default_index_dir(None))
    layout = IndexLayout(tmp_path)
    layout.coarse_dir.mkdir()
    (layout.coarse_dir / layout.segment_name(3)).write_bytes(b"")
    (layout.coarse_dir / layout.segment_name(12)).write_bytes(b"")
    assert layout.numbered_files("segment") == [3, 12]


def test_a_journal_left_by_a_killed_writer_is_rolled_back_by_the_next_reader(tmp_path):
    _catalog_with_clips(tmp_path).close()
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, time
        conn = sqlite3.connect({str(tmp_path / "catalog.sqlite")!r})
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("PRAGMA cache_size = 1")  # spill: the journal is hot on disk
        conn.execute("DELETE FROM clips")
        conn.executemany("INSERT INTO meta VALUES (?, 'x')", [(str(i),) for i in range(20000)])
        print("mid-commit", flush=True)
        time.sleep(300)
        """)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "mid-commit"
    writer.kill()
    writer.wait()
    assert (tmp_path / "catalog.sqlite-journal").exists()
    catalog = Catalog(tmp_path / "catalog.sqlite")  # a reader: search, status, verify
    assert catalog.clip_ids_of("/v/a.mp4") == [1, 2]  # the last commit, whole
    assert not (tmp_path / "catalog.sqlite-journal").exists()


def test_a_failure_after_the_transaction_keeps_what_the_commit_made(tmp_path, monkeypatch):
    """Deleting retired files comes after the commit's transaction: if it fails (a full disk,
    a busy database), the committed files must stay, and the next commit retries."""
    from mgvr.storage import commit as commit_module

    layout = IndexLayout(tmp_path)
    catalog = Catalog.create(layout.catalog)
    rng = np.random.default_rng(5)

    def failing(layout, catalog):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(commit_module, "delete_retired", failing)
    with Commit(layout, catalog) as commit:
        name, writer = commit.new_part({"dim": 32})
        writer.append(_row(rng, 1, 3))
        commit.add_part(name, writer)
        record = commit.add_segment(np.array([1]), _unit(rng, 1, 32))
        commit.apply()
    commit.abort()  # as a writer's cleanup would
    assert catalog.generation() == 1
    assert {p.name for p in layout.data_files()} == {name, "part-000001.rows.npy", record.name}


def test_a_catalog_rebuilt_from_the_parts_holds_the_newest_rows_of_each_file(tmp_path):
    """Files re-indexed later have rows in several parts: the rebuilt catalog takes each file's
    rows of the newest part naming it, at the same clip ids, parts and rows as the lost
    catalog, over segments that verify finds consistent."""
    from synthetic import SyntheticSpace, write_index

    from mgvr.config import IndexConfig, ModelIdentity
    from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter
    from mgvr.storage.rebuild import rebuild_catalog
    from mgvr.storage.verify import verify

    dim = 16
    space = SyntheticSpace.make(dim, topics=8, rank=8, seed=0)
    root = tmp_path / "index"
    write_index(root, ModelIdentity("synthetic", "none", "0" * 64, dim, 64, 77), 700, 3,
                space, part_rows=200, merge=False)
    layout = IndexLayout(root)
    catalog = layout.open_catalog()
    config = IndexConfig.load(root)
    writer = IndexWriter(layout, catalog, config)
    rng = np.random.default_rng(4)
    for video, clips in ((2, 1), (30, 3), (2, 2)):  # video 2 twice: its newest part wins
        features, vectors = space.clips(clips, 3, rng)
        writer.add(FileFacts(f"/synthetic/video-{video:07d}.mp4", 5, 6, None, 15.0 * clips,
                             640, 360),
                   [EncodedClip(i, 15.0 * i, 15.0 * (i + 1), np.arange(3, dtype=np.float32),
                                features[i], vectors[i]) for i in range(clips)])
        writer.commit()

    def clips(cat):
        return [(c.clip_id, c.video_path, c.part, c.row, c.n_frames)
                for c in cat.clip_locations()]

    expected, videos = clips(catalog), catalog.video_count()
    next_clip_id = catalog.next_clip_id()
    catalog.close()
    layout.catalog.unlink()
    report = rebuild_catalog(layout)
    rebuilt = layout.open_catalog()
    try:
        assert clips(rebuilt) == expected
        assert (report.clips, report.videos) == (len(expected), videos)
        assert rebuilt.video_count() == videos and rebuilt.next_clip_id() == next_clip_id
        assert verify(layout, rebuilt).clean
    finally:
        rebuilt.close()
