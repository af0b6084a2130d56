"""Bad input through the real command, incremental re-runs and the Python API."""

import dataclasses
import os
import shutil

import pytest
from conftest import make_video, run_cli

import mgvr
from mgvr.storage.lock import WriterLock


def test_bad_folders_get_one_line_and_exit_2(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "readme.txt").write_text("hi")
    (tmp_path / "a_file").write_text("x")
    index = ["--index", str(tmp_path / "idx"), "--model", tiny_model["model"], "--pretrained",
             tiny_model["pretrained"]]
    cases = {
        tmp_path / "missing": "no such folder",
        tmp_path / "a_file": "not a folder",
        tmp_path / "empty": "no video files found",
        tmp_path / "only_text": "no video files found",
    }
    for folder, message in cases.items():
        result = run_cli("index", str(folder), *index)
        assert result.returncode == 2, (folder, result.stderr)
        assert result.stderr.strip() == f"mgvr: error: {folder}: {message}" + result.stderr.strip(
        ).split(message, 1)[1]
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["index", ".", "--frames", "0"], "--frames must be a positive number"),
    (["index", ".", "--frames", "-3"], "--frames must be a positive number"),
    (["index", ".", "--clip-seconds", "0"], "--clip-seconds must be positive"),
    (["search", "cats", "--rerank-depth", "0"], "--rerank-depth must be positive"),
    (["search", "cats", "--rerank-depth", "-1"], "--rerank-depth must be positive"),
    (["search", "cats", "--limit", "0"], "--limit must be positive"),
])
def test_non_positive_counts_are_refused(tmp_path, args, message):
    result = run_cli(*args, "--index", str(tmp_path / "idx"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_search_needs_a_real_index_and_a_query(tmp_path, corpus, tiny_model):
    missing = run_cli("search", "cats", "--index", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no mgvr index here" in missing.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mgvr.json").write_text('{"something": "else"}')
    (foreign / "catalog.sqlite").write_bytes(b"")
    result = run_cli("search", "cats", "--index", str(foreign))
    assert result.returncode == 2 and "not a readable mgvr index config" in result.stderr

    index = tmp_path / "idx"
    mgvr.Index(index).update(corpus / "nested", settle_seconds=0, **tiny_model)
    empty = run_cli("search", "  ", "--index", str(index))
    assert empty.returncode == 2 and "empty query" in empty.stderr
    assert "Traceback" not in missing.stderr + result.stderr + empty.stderr


def test_a_second_writer_exits_4_naming_the_holder(tmp_path, corpus, tiny_model):
    index = tmp_path / "idx"
    index.mkdir()
    with WriterLock(index / "lock"):
        result = run_cli("index", str(corpus / "nested"), "--index", str(index))
    assert result.returncode == 4
    assert f"(pid {os.getpid()})" in result.stderr and "--wait" in result.stderr


def test_changed_deleted_and_new_files_between_runs(tmp_path, tiny_model):
    folder = tmp_path / "videos"
    make_video(folder / "keep.mp4", "testsrc2", "160x120", 2)
    make_video(folder / "change.mp4", "smptebars", "160x120", 2)
    make_video(folder / "delete.mp4", "rgbtestsrc", "160x120", 2)
    index = mgvr.Index(tmp_path / "idx", device="cpu")
    first = index.update(folder, settle_seconds=0, **tiny_model)
    assert (first.indexed, first.clips_added, first.failed) == (3, 3, 0)
    ids = {hit.path: hit.clip_id for hit in index.search("x", limit=10)}

    os.remove(folder / "delete.mp4")
    make_video(folder / "change.mp4", "mandelbrot", "160x120", 20)  # longer: two clips now
    make_video(folder / "new.mkv", "life", "160x120", 2)
    second = index.update(folder, settle_seconds=0)
    # A vanished file is first marked missing (kept: a disk may come back), not removed.
    assert (second.indexed, second.unchanged, second.missing, second.removed) == (2, 1, 1, 0)
    assert str(folder / "delete.mp4") in {h.path for h in index.search("x", limit=10)}
    assert index.update(folder, settle_seconds=0, remove_after_s=60).removed == 0
    third = index.update(folder, settle_seconds=0, remove_after_s=0)  # past its grace period
    assert (third.removed, third.missing) == (1, 0)
    hits = index.search("x", limit=10)
    paths = sorted(os.path.basename(h.path) for h in hits)
    assert paths == ["change.mp4", "change.mp4", "keep.mp4", "new.mkv"]
    new_ids = {h.path: h.clip_id for h in hits}
    assert new_ids[str(folder / "keep.mp4")] == ids[str(folder / "keep.mp4")]
    assert new_ids[str(folder / "change.mp4")] not in ids.values()

    # An emptied folder (an unmounted disk) removes nothing, whatever the grace period...
    shutil.rmtree(folder)
    folder.mkdir()
    refused = index.update(folder, settle_seconds=0, remove_after_s=0)
    assert (refused.removed, refused.missing) == (0, 0)
    assert "none of them" in refused.removal_refused
    assert len(index.search("x", limit=10)) == 4
    # ... unless the user says the files are really gone.
    emptied = index.update(folder, settle_seconds=0, remove_after_s=0, max_remove=1.0)
    assert emptied.removed == 3 and index.search("x") == []


def test_python_api_returns_frozen_hits(tmp_path, corpus, tiny_model):
    index = mgvr.Index(tmp_path / "idx")
    summary = index.update(corpus / "nested", settle_seconds=0, **tiny_model)
    assert isinstance(summary, mgvr.RunSummary) and summary.indexed == 1
    hits = index.search("a colourful test picture", limit=3)
    assert len(hits) == 1 and isinstance(hits[0], mgvr.Hit)
    assert hits[0].path.endswith("ünïcode clip.mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hits[0].score = 1.0
