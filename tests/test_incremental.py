"""Folder changes between runs, status, verify (with injected damage), repair and compact."""

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import make_video, run_cli, verify_index

import mgvr
from mgvr.hashing import sha256_file
from mgvr.storage.catalog import Catalog
from mgvr.storage.coarse import build_segment, load_segment, segment_items, write_segment


def _clip_ids(index_dir):
    catalog = Catalog(index_dir / "catalog.sqlite", readonly=True)
    try:
        return {loc.video_path: loc.clip_id for loc in catalog.clip_locations()}
    finally:
        catalog.close()


@pytest.fixture
def folder(tmp_path):
    videos = tmp_path / "videos"
    make_video(videos / "a.mp4", "testsrc2", "160x120", 2)
    make_video(videos / "b.mp4", "smptebars", "160x120", 2)
    make_video(videos / "c.mkv", "rgbtestsrc", "160x120", 2)
    make_video(videos / "d.webm", "mandelbrot", "160x120", 2,
               codec=["-c:v", "libvpx", "-deadline", "realtime"])
    return videos


def test_rename_move_modify_delete_corrupt_and_partial_files(tmp_path, folder, tiny_model):
    index = mgvr.Index(tmp_path / "idx", device="cpu")
    assert index.update(folder, settle_seconds=0, **tiny_model).indexed == 4
    before = _clip_ids(tmp_path / "idx")
    now = {"settle_seconds": 0, "remove_after_s": 0}  # deleted files leave at once here

    (folder / "sub").mkdir()
    os.rename(folder / "a.mp4", folder / "sub" / "a renamed.mp4")  # moved: clips kept
    os.rename(folder / "c.mkv", folder / "c\nwith newline.mkv")  # renamed, odd name
    make_video(folder / "b.mp4", "life", "160x120", 3)  # modified
    os.remove(folder / "d.webm")  # deleted
    (folder / "e.mp4").write_bytes(os.urandom(5000))  # corrupt new file
    make_video(folder / "f.mp4", "testsrc", "160x120", 2)  # new
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a symlink loop
    run = index.update(folder, **now)
    assert (run.indexed, run.moved, run.removed, run.failed) == (2, 2, 1, 1)
    assert run.clips_added == 2  # b and f only: the moved files were not re-encoded
    after = _clip_ids(tmp_path / "idx")
    assert after[str(folder / "sub" / "a renamed.mp4")] == before[str(folder / "a.mp4")]
    assert after[str(folder / "c\nwith newline.mkv")] == before[str(folder / "c.mkv")]
    assert after[str(folder / "b.mp4")] not in before.values()
    assert str(folder / "d.webm") not in after and str(folder / "e.mp4") not in after
    assert [h.path for h in index.search("x", limit=20)].count(str(folder / "b.mp4")) == 1

    # A file modified within the settle time is probably still being copied: left for later.
    make_video(folder / "g.mp4", "testsrc2", "160x120", 2)
    run = index.update(folder, settle_seconds=60)
    assert (run.indexed, run.deferred) == (0, 1)
    past = time.time() - 120
    os.utime(folder / "g.mp4", (past, past))
    run = index.update(folder, settle_seconds=60)
    assert (run.indexed, run.deferred, run.unchanged, run.skipped_failed) == (1, 0, 4, 1)

    # A failed file is not retried until it changes, or with retry_failed.
    assert index.update(folder, **now).skipped_failed == 1
    assert index.update(folder, **now, retry_failed=True).failed == 1
    shutil.copy(folder / "f.mp4", folder / "e.mp4")
    assert index.update(folder, **now).indexed == 1
    assert verify_index(tmp_path / "idx").clean


def test_status_reports_files_failures_runs_and_size(tmp_path, folder, tiny_model):
    (folder / "broken.mp4").write_text("not a video")
    result = run_cli("index", str(folder), "--index", str(tmp_path / "idx"), "--model",
                     tiny_model["model"], "--pretrained", tiny_model["pretrained"])
    assert result.returncode == 3
    report = json.loads(run_cli("status", "--index", str(tmp_path / "idx"), "--json").stdout)
    assert (report["files_indexed"], report["files_failed"], report["clips"]) == (4, 1, 4)
    assert report["failed"][0]["path"] == str(folder / "broken.mp4")
    assert report["failed"][0]["reason"] == "not-a-video"
    assert report["runs"][0]["indexed"] == 4 and report["runs"][0]["finished_at"] is not None
    assert report["disk_bytes"] > 0
    text = run_cli("status", "--index", str(tmp_path / "idx"))
    assert text.returncode == 0 and "4 files, 4 clips, 1 failed" in text.stdout
    assert f"failed: {folder / 'broken.mp4'}: not-a-video" in text.stdout


def _fresh_index(tmp_path, folder, tiny_model):
    index_dir = tmp_path / "idx"
    mgvr.Index(index_dir, device="cpu").update(folder, settle_seconds=0, **tiny_model)
    assert verify_index(index_dir).clean
    return index_dir


def test_verify_detects_and_repairs_a_truncated_faiss_file(tmp_path, folder, tiny_model):
    index_dir = _fresh_index(tmp_path, folder, tiny_model)
    faiss_file = next(index_dir.glob("coarse/seg-*.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    result = run_cli("verify", "--index", str(index_dir))
    assert result.returncode == 1 and f"coarse/{faiss_file.name}: 100 bytes" in result.stdout
    search = run_cli("search", "x", "--index", str(index_dir))
    assert search.returncode == 1 and "verify --repair" in search.stderr  # refused, not wrong
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "rebuilt seg-" in repaired.stdout and "index is consistent" in repaired.stdout
    assert len(mgvr.Index(index_dir, device="cpu").search("x", limit=10)) == 4


def test_verify_detects_a_deleted_shard_and_repair_lists_files_to_reindex(
        tmp_path, folder, tiny_model):
    index_dir = _fresh_index(tmp_path, folder, tiny_model)
    for part in (index_dir / "fine").glob("part-*"):
        part.unlink()
    report = verify_index(index_dir)
    assert any("missing" in p for p in report.problems)
    report = verify_index(index_dir, repair=True)
    assert sorted(report.reindex) == sorted(str(p) for p in folder.iterdir())
    assert verify_index(index_dir).clean
    assert mgvr.Index(index_dir).search("x") == []
    assert mgvr.Index(index_dir).update(folder, settle_seconds=0).indexed == 4  # re-indexed
    assert verify_index(index_dir).clean


def test_verify_detects_clips_without_vectors_and_searchable_dead_clips(
        tmp_path, folder, tiny_model):
    """A segment that lost one live clip's vector and holds one of a clip the catalog never
    had (written in place with a matching checksum, so only the content checks can tell)."""
    index_dir = _fresh_index(tmp_path, folder, tiny_model)
    catalog = Catalog(index_dir / "catalog.sqlite")
    segment = catalog.segments()[0]
    path = index_dir / "coarse" / segment.name
    ids, vectors = segment_items(load_segment(path, 64, None))
    victim = int(ids[0])
    ids = np.append(ids[1:], 99999)
    vectors = np.concatenate([vectors[1:], np.ones((1, 64), np.float32) / 8])
    write_segment(build_segment(ids, vectors, "flat")[0], path)
    with catalog.transaction():
        catalog.replace_file(f"coarse/{segment.name}", path.stat().st_size,
                             sha256_file(path))
    catalog.close()
    report = verify_index(index_dir)
    assert f"live clips have no coarse vector (e.g. clip {victim})" in " ".join(report.problems)
    assert "vectors of removed clips are searchable" in " ".join(report.problems)
    assert "clip 99999" in " ".join(report.problems)
    assert verify_index(index_dir, repair=True).reindex == []
    assert verify_index(index_dir).clean
    hits = mgvr.Index(index_dir).search("x", limit=10)
    assert len(hits) == 4 and 99999 not in {h.clip_id for h in hits}


def test_compact_drops_dead_rows_and_keeps_search_results(tmp_path, folder, tiny_model):
    index_dir = _fresh_index(tmp_path, folder, tiny_model)
    index = mgvr.Index(index_dir, device="cpu")
    make_video(folder / "a.mp4", "life", "160x120", 3)
    os.remove(folder / "b.mp4")
    index.update(folder, settle_seconds=0, remove_after_s=0)
    expected = [(h.clip_id, round(h.score, 5)) for h in index.search("a test", limit=10)]
    result = run_cli("compact", "--index", str(index_dir))
    assert result.returncode == 0 and "dropped 2 dead rows" in result.stdout, result.stdout
    assert "merged 2 segments into 1" in result.stdout
    assert verify_index(index_dir).clean
    # A retriever opened before the compaction (its cached locations point at deleted parts)
    # and a fresh one both still find the same clips.
    assert [(h.clip_id, round(h.score, 5)) for h in index.search("a test", limit=10)] == expected
    fresh = mgvr.Index(index_dir, device="cpu")
    assert [(h.clip_id, round(h.score, 5)) for h in fresh.search("a test", limit=10)] == expected
    again = run_cli("compact", "--index", str(index_dir))
    assert "rewrote 0 parts, dropped 0 dead rows" in again.stdout
