"""Crash safety with real processes: `mgvr index` killed with SIGKILL at chosen moments,
concurrent writers, and searches running while an index run commits.

Nothing here waits on a sleep for another process to get somewhere: the tests act on what the
processes print (each commit prints a line when stderr is not a terminal) or on the lock."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_video, run_cli, verify_index

import mgvr
from mgvr.retriever import Retriever
from mgvr.storage.catalog import Catalog
from mgvr.storage.coarse import load_segment, segment_items
from mgvr.storage.commit import PAUSE_ENV
from mgvr.storage.fine import FineReader
from mgvr.storage.layout import IndexLayout
from mgvr.storage.lock import WriterLock

KILLS = 20
SEED = 20261128


@pytest.fixture(scope="module")
def crash_corpus(tmp_path_factory):
    """Twelve files of 4-16 s: 120 clips of 1 s. A commit is due every 3 clips and happens after
    each encode batch (64 frames, 16 clips of 4 frames), so a run has about 8 commits."""
    root = tmp_path_factory.mktemp("crash_corpus")
    sources = ["testsrc2", "smptebars", "mandelbrot", "life", "rgbtestsrc", "testsrc"]
    for i in range(12):
        make_video(root / f"video_{i:02d}.mp4", sources[i % 6], "160x120", 4 + (i % 4) * 4,
                   rate=10)
    return root


def _index_args(folder, index_dir, tiny_model, clip_seconds=4):
    return ["index", str(folder), "--index", str(index_dir), "--model", tiny_model["model"],
            "--pretrained", tiny_model["pretrained"], "--clip-seconds", str(clip_seconds),
            "--frames", "4", "--commit-every", "3", "--workers", "2"]


def _start(args, pause_before_commit=False):
    """The real CLI; with `pause_before_commit` it stops right before its first commit's
    catalog transaction (files written, catalog untouched) and says so, to be killed there."""
    env = {**os.environ, PAUSE_ENV: "1"} if pause_before_commit else None
    return subprocess.Popen([sys.executable, "-m", "mgvr.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


def _wait_for_pause(process):
    for line in process.stderr:
        if line.startswith("mgvr: paused before commit"):
            return
    pytest.fail("the process ended without pausing before a commit")


def _commit_lines(process):
    """The clips of each commit the process announces, as it announces them (then None at
    its end)."""
    for line in process.stderr:
        if line.startswith("mgvr: committed generation"):
            yield int(line.rsplit("(", 1)[1].split()[0])
    yield None


def _snapshot(index_dir):
    """{(path, clip_index): (start, end, coarse vector, frame features)} of the committed index."""
    layout = IndexLayout(index_dir)
    catalog = Catalog(layout.catalog)
    try:
        if catalog.generation() == 0:
            return {}
        records = catalog.clips_by_ids(catalog.all_clip_ids())
        rows = FineReader(layout.fine_dir, 64).read([(r.part, r.row) for r in records.values()])
        vectors = {}
        for segment in catalog.segments():
            dead = set(catalog.tombstones(segment.name))
            ids, stored = segment_items(load_segment(layout.segment(segment.name), 64, None))
            vectors.update((i, v) for i, v in zip(ids.tolist(), stored, strict=True)
                           if i not in dead)
        assert sorted(vectors) == sorted(records), "FAISS ids differ from the catalog's clips"
        return {(records[clip_id].video_path, records[clip_id].clip_index):
                (records[clip_id].start_s, records[clip_id].end_s, vectors[clip_id], row.features)
                for clip_id, row in zip(records, rows, strict=True)}
    finally:
        catalog.close()


def _assert_consistent(index_dir):
    layout = IndexLayout(index_dir)
    if not layout.exists():
        return 0  # killed before the first commit: nothing committed, nothing to check
    report = verify_index(index_dir)
    assert report.clean, report.problems
    snapshot = _snapshot(index_dir)
    if snapshot:
        hits = mgvr.Index(index_dir, device="cpu").search("a test pattern", limit=len(snapshot))
        assert len(hits) == len(snapshot)
        assert len({h.clip_id for h in hits}) == len(hits)
    return len(snapshot)


def test_sigkill_at_chosen_moments_loses_and_duplicates_nothing(tmp_path, crash_corpus,
                                                                 tiny_model):
    reference_dir = tmp_path / "reference"
    result = run_cli(*_index_args(crash_corpus, reference_dir, tiny_model, clip_seconds=1))
    assert result.returncode == 0, result.stderr
    reference = _snapshot(reference_dir)
    assert len(reference) == 3 * (4 + 8 + 12 + 16)  # 4, 8, 12 and 16 s files, 1 s clips

    # Each kill comes after a seeded number of commit lines (0: as soon as the run starts), and
    # a seeded random part of a second later, so it lands inside commits too.
    rng = random.Random(SEED)
    index_dir = tmp_path / "killed"
    kills = []
    for _ in range(4 * KILLS):  # bounded: a run that finishes first does not count
        if len(kills) == KILLS:
            break
        before = _assert_consistent(index_dir)
        mid_commit = len(kills) % 4 == 3  # every fourth: inside a commit, deterministically
        process = _start(_index_args(crash_corpus, index_dir, tiny_model, clip_seconds=1),
                         pause_before_commit=mid_commit)
        wanted = -1 if mid_commit else rng.randint(0, 4)
        announced = 0
        if mid_commit:
            _wait_for_pause(process)
        else:
            lines = _commit_lines(process)
            for _ in range(wanted):
                clips = next(lines)
                if clips is None:
                    break
                announced += clips
            time.sleep(rng.uniform(0, 0.3))
        if process.poll() is not None:  # finished before the kill: start over from scratch
            assert process.wait() == 0
            assert _snapshot(index_dir).keys() == reference.keys()
            shutil.rmtree(index_dir)
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        committed = _assert_consistent(index_dir)
        assert committed >= before + announced  # what a commit line announced is durable
        if mid_commit:
            assert committed == before  # files written, catalog untouched: nothing committed
        kills.append((wanted, committed))
        if committed == len(reference):  # nothing left for the next run to do: start over
            shutil.rmtree(index_dir)

    result = run_cli(*_index_args(crash_corpus, index_dir, tiny_model, clip_seconds=1))
    assert result.returncode == 0, result.stderr
    final = _snapshot(index_dir)
    assert final.keys() == reference.keys()
    for key, (start, end, vector, features) in reference.items():
        got = final[key]
        assert (got[0], got[1]) == pytest.approx((start, end))
        assert np.allclose(got[2], vector, atol=1e-4)
        assert np.allclose(got[3].astype(np.float32), features.astype(np.float32), atol=2e-3)
    assert _assert_consistent(index_dir) == len(reference)
    assert not [p for p in index_dir.rglob("*") if p.name.endswith(".tmp")]
    print("(commit lines waited for, -1 inside a commit; committed clips) at each kill:", kills)
    assert len(kills) == KILLS
    assert len({wanted for wanted, _ in kills}) >= 3  # kills at several stages of a run


def test_second_writer_exits_4_or_waits(tmp_path, crash_corpus, tiny_model):
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    args = _index_args(crash_corpus, index_dir, tiny_model)
    with WriterLock(index_dir / "lock", command="compact") as held:
        second = run_cli(*args)
        assert second.returncode == 4
        assert f"another `mgvr compact` (pid {os.getpid()})" in second.stderr
        waiting = subprocess.Popen([sys.executable, "-m", "mgvr.cli", *args, "--wait", "300"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        line = waiting.stderr.readline()  # it says it waits, then waits: release the lock
        assert "waiting for `mgvr compact`" in line, line
        assert held
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert "indexed 12 files" in out
    assert _assert_consistent(index_dir) > 0


def test_stale_lock_of_a_killed_writer_is_taken_over(tmp_path, crash_corpus, tiny_model):
    index_dir = tmp_path / "idx"
    first = _start(_index_args(crash_corpus, index_dir, tiny_model))
    while not (index_dir / "lock").exists() or not (index_dir / "lock").read_text():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (index_dir / "lock").read_text() == f"{first.pid} index"  # left by the dead
    result = run_cli(*_index_args(crash_corpus, index_dir, tiny_model))
    assert result.returncode == 0, result.stderr


def test_searches_during_an_index_run_never_fail(tmp_path, crash_corpus, tiny_model):
    index_dir = tmp_path / "idx"
    first_half = tmp_path / "half"
    first_half.mkdir()
    for path in sorted(crash_corpus.iterdir())[:3]:
        shutil.copy(path, first_half / path.name)
    assert run_cli(*_index_args(first_half, index_dir, tiny_model)).returncode == 0
    retriever = Retriever(index_dir, device="cpu")
    generations = [retriever.catalog.generation()]
    writer = _start(_index_args(crash_corpus, index_dir, tiny_model))
    for clips in _commit_lines(writer):  # a search after each commit, while the run goes on
        hits = retriever.search("a colourful pattern", limit=100).hits
        assert hits and len({h.clip_id for h in hits}) == len(hits)
        generations.append(retriever.catalog.generation())
        if clips is None:
            break
    assert writer.wait() == 0
    assert len(generations) > 3 and generations == sorted(generations)
    assert generations[-1] > generations[0]
    assert len(retriever.search("a colourful pattern", limit=100).hits) == len(
        _snapshot(index_dir))


def test_compact_killed_mid_merge_leaves_the_index_whole(tmp_path, crash_corpus, tiny_model):
    """Several index runs leave many small segments; `mgvr compact` (a merge is a commit like
    any other) is SIGKILLed with its merged segment written but not committed, then run
    again."""
    index_dir = tmp_path / "idx"
    files = sorted(crash_corpus.iterdir())
    for start in range(0, len(files), 3):
        folder = tmp_path / f"batch{start}"
        folder.mkdir()
        for path in files[start:start + 3]:
            shutil.copy(path, folder / path.name)
        assert run_cli(*_index_args(folder, index_dir, tiny_model), "--merge-budget",
                       "0").returncode == 0
    before = _snapshot(index_dir)
    catalog = Catalog(index_dir / "catalog.sqlite")
    assert len(catalog.segments()) >= 4
    catalog.close()
    layout = IndexLayout(index_dir)
    generation = Catalog(layout.catalog).generation()
    known = set(layout.data_files())
    compact = _start(["compact", "--index", str(index_dir)], pause_before_commit=True)
    _wait_for_pause(compact)  # the merged segment written, the catalog not yet switched
    compact.send_signal(signal.SIGKILL)
    assert compact.wait() == -signal.SIGKILL
    assert set(layout.data_files()) - known  # the merge's files: orphans now
    assert Catalog(layout.catalog).generation() == generation
    assert _assert_consistent(index_dir) == len(before)
    assert run_cli("compact", "--index", str(index_dir)).returncode == 0
    after = _snapshot(index_dir)
    assert after.keys() == before.keys()
    assert all(np.allclose(after[k][2], before[k][2], atol=1e-4) for k in before)
    catalog = Catalog(index_dir / "catalog.sqlite")
    assert len(catalog.segments()) == 1 and catalog.tombstones() == []
    catalog.close()
