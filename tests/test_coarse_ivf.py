"""Coarse segments on real FAISS files: layouts by size, tombstones and filters applied inside
the search, several segments merged into one top k, each checked against brute force."""

import numpy as np
import pytest
import torch
from synthetic import SyntheticSpace

from mgvr.errors import IndexDamagedError
from mgvr.hashing import sha256_file
from mgvr.retriever.recall import CoarseSearcher, LoadedSegment, TorchExactSearch
from mgvr.storage import coarse as coarse_module
from mgvr.storage.catalog import SegmentRecord
from mgvr.storage.coarse import (
    build_segment,
    load_segment,
    nlist_for,
    recall_at_k,
    segment_items,
    segment_pieces,
    write_segment,
)

DIM = 32


@pytest.fixture
def small_thresholds(monkeypatch):
    """IVF from 4,000 vectors and SQ8 from 8,000 instead of 50,000 / 250,000, so the tests
    stay fast; the policy is unchanged."""
    monkeypatch.setattr(coarse_module, "FLAT_MAX_ROWS", 4000)
    monkeypatch.setattr(coarse_module, "SQ8_MIN_ROWS", 8000)


def _clips(count: int, seed: int = 0, first_id: int = 10):
    space = SyntheticSpace.make(DIM, topics=max(8, count // 200), rank=16, seed=seed)
    _, vectors = space.clips(count, 2, np.random.default_rng(seed + 1))
    return space, np.arange(first_id, first_id + count, dtype=np.int64) * 3, vectors


def _exact(ids, vectors, queries, k):
    scores = queries @ vectors.T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def _loaded(name, ids, vectors, dead=(), kind=None, tmp_path=None):
    index, layout = build_segment(ids, vectors, kind)
    if tmp_path is not None:  # through a real file, checked by its checksum
        path = tmp_path / name
        write_segment(index, path)
        index = load_segment(path, DIM, sha256_file(path))
    record = SegmentRecord(name, layout.kind, layout.rows, layout.nlist, layout.nprobe,
                           layout.ef_search)
    return LoadedSegment(record, index, np.asarray(sorted(dead), np.int64))


def test_layout_follows_the_size(small_thresholds):
    _, ids, vectors = _clips(9000)
    assert build_segment(ids[:3000], vectors[:3000])[1].kind == "flat"
    _, layout = build_segment(ids[:6000], vectors[:6000])
    assert layout.kind == "ivf-flat" and layout.nlist == nlist_for(6000) == 128
    assert 1 <= layout.nprobe <= layout.nlist and layout.ef_search >= 2 * layout.nprobe
    assert build_segment(ids, vectors)[1].kind == "ivf-sq8"


@pytest.mark.parametrize("count", [6000, 9000])  # ivf-flat, ivf-sq8
def test_ivf_segment_reaches_its_recall_target_after_a_reload(tmp_path, small_thresholds,
                                                              count):
    space, ids, vectors = _clips(count)
    segment = _loaded("seg-000001.faiss", ids, vectors, tmp_path=tmp_path)
    searcher = CoarseSearcher([segment], int(ids.max()) + 1, torch.device("cpu"))
    queries = space.queries(100, np.random.default_rng(9))
    scores, found = searcher.search(queries, 50)
    assert recall_at_k(found, _exact(ids, vectors, queries, 50)) >= 0.98
    rows = np.searchsorted(ids, np.where(found >= 0, found, ids[0]))
    exact_scores = np.take_along_axis(queries @ vectors.T, rows, axis=1)
    tolerance = 1e-5 if segment.record.kind == "ivf-flat" else 2e-2  # SQ8 codes
    assert np.allclose(scores[found >= 0], exact_scores[found >= 0], atol=tolerance)
    stored_ids, stored = segment_items(segment.index)
    order = np.argsort(stored_ids)
    assert np.array_equal(stored_ids[order], ids)
    assert np.abs(stored[order] - vectors).max() < max(tolerance, 1e-6)


@pytest.mark.parametrize("count", [3000, 6000, 9000])  # flat, ivf-flat, ivf-sq8
def test_segment_pieces_read_from_the_file_equal_the_loaded_segment(tmp_path, small_thresholds,
                                                                   count):
    """verify walks a segment piece by piece with its IVF lists left in the file (pread); the
    walk gives exactly the ids and vectors of the segment as search loads it."""
    _, ids, vectors = _clips(count)
    index, _ = build_segment(ids, vectors)
    path = tmp_path / "seg-000001.faiss"
    write_segment(index, path)
    expected_ids, expected = segment_items(load_segment(path, DIM, sha256_file(path)))
    for lists_on_disk in (False, True):
        pieces = list(segment_pieces(load_segment(path, DIM, None, lists_on_disk), path,
                                     rows=1000))
        assert len(pieces) > 1 and max(len(i) for i, _ in pieces) <= max(1000, count // 16)
        assert np.array_equal(np.concatenate([i for i, _ in pieces]), expected_ids)
        assert np.array_equal(np.concatenate([v for _, v in pieces]), expected)
    if count > 3000:  # FAISS refuses a file cut short at load; cut after, at the walk
        loaded = load_segment(path, DIM, None, lists_on_disk=True)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 4096)
        with pytest.raises(IndexDamagedError, match="ends inside an inverted list"):
            list(segment_pieces(loaded, path))


def test_tombstones_and_segments_merge_into_the_exact_live_top_k(tmp_path, small_thresholds):
    """A big IVF segment, two small flat ones, 5% of the ids dead: no dead clip comes back and
    recall against exact search over the LIVE set stays at target."""
    space, ids, vectors = _clips(7000)
    rng = np.random.default_rng(5)
    dead = set(rng.choice(ids, len(ids) // 20, replace=False).tolist())
    cuts = [0, 6000, 6500, 7000]
    segments = [_loaded(f"seg-{i:06d}.faiss", ids[a:b], vectors[a:b],
                        [d for d in dead if ids[a] <= d <= ids[b - 1]], tmp_path=tmp_path)
                for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]
    assert [s.record.kind for s in segments] == ["ivf-flat", "flat", "flat"]
    searcher = CoarseSearcher(segments, int(ids.max()) + 1, torch.device("cpu"))
    assert len(searcher) == len(ids) - len(dead)
    live = ~np.isin(ids, list(dead))
    queries = space.queries(60, np.random.default_rng(2))
    scores, found = searcher.search(queries, 50)
    assert not np.isin(found, list(dead)).any()
    assert recall_at_k(found, _exact(ids[live], vectors[live], queries, 50)) >= 0.98
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # one merged ranking, best first


def test_a_filter_finds_every_allowed_clip_even_outside_the_unfiltered_top_k(small_thresholds):
    space, ids, vectors = _clips(6000)
    segment = _loaded("seg-000001.faiss", ids, vectors)
    searcher = CoarseSearcher([segment], int(ids.max()) + 1, torch.device("cpu"))
    query = space.queries(1, np.random.default_rng(4))
    _, unfiltered = searcher.search(query, 50)
    allowed = np.sort(np.setdiff1d(ids, unfiltered[0])[::300])  # 20 ids, none in the top 50
    scores, found = searcher.search(query, 50, allowed_ids=allowed)
    assert sorted(found[0][found[0] >= 0].tolist()) == allowed.tolist()  # all 20, no more
    order = np.argsort(-(query @ vectors[np.searchsorted(ids, allowed)].T)[0])
    assert found[0][:20].tolist() == allowed[order].tolist()


def test_a_damaged_segment_file_is_refused_before_faiss_reads_it(tmp_path):
    _, ids, vectors = _clips(500)
    index, _ = build_segment(ids, vectors)
    path = tmp_path / "seg-000001.faiss"
    write_segment(index, path)
    checksum = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexDamagedError, match="fails its checksum"):
        load_segment(path, DIM, checksum)
    path.write_bytes(b"garbage")
    with pytest.raises(IndexDamagedError, match="unreadable FAISS file"):
        load_segment(path, DIM, None)


def test_torch_exact_search_the_gpu_fallback_matches_brute_force():
    # The GPU fallback's code (float16 vectors, one matmul, top-k) run on the CPU.
    space, ids, vectors = _clips(3000)
    removed = ids[::7]
    kept = ~np.isin(ids, removed)
    search = TorchExactSearch(ids, vectors, torch.device("cpu"))
    queries = space.queries(5, np.random.default_rng(3)).astype(np.float32)
    scores, found = search.search(queries, 20, excluded=removed)
    exact_scores = queries @ vectors[kept].T
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    for q in range(len(queries)):
        order = np.argsort(-exact_scores[q])
        # float16 storage moves scores by ~1e-3: compare sets above that margin.
        assert np.allclose(scores[q], exact_scores[q][order[:20]], atol=2e-3)
        assert len(set(found[q]) ^ set(ids[kept][order[:20]])) <= 2
        assert not set(found[q].tolist()) & set(removed.tolist())  # no removed clip returns
        true_scores = np.array([by_id[i] @ queries[q] for i in found[q].tolist()])
        assert np.allclose(scores[q], true_scores, atol=2e-3)  # each id with its own score
    allowed = np.sort(ids[kept][::50])
    _, only = search.search(queries, 20, excluded=removed, allowed=allowed)
    assert set(only.ravel().tolist()) <= set(allowed.tolist())


def test_a_segment_mostly_tombstones_is_searched_through_the_selector():
    """When the unfiltered answer holds too few live clips, the search goes through FAISS's
    ID selector: the answer is the exact live top k either way."""
    space, ids, vectors = _clips(2000)
    dead = ids[np.arange(len(ids)) % 20 != 0]  # 95% removed
    segment = _loaded("seg-000001.faiss", ids, vectors, dead)
    searcher = CoarseSearcher([segment], int(ids.max()) + 1, torch.device("cpu"))
    queries = space.queries(10, np.random.default_rng(6))
    _, found = searcher.search(queries, 30)
    live = ~np.isin(ids, dead)
    assert np.array_equal(found, _exact(ids[live], vectors[live], queries, 30))


def test_small_segments_with_tombstones_never_return_dead_clips_or_crowd_out_live_ones():
    """Every cron commit's segment is small: with fewer live clips than k in it, the places
    left over must stay empty, so the other segments fill them."""
    space, ids, vectors = _clips(400)
    dead = ids[:60][::3]  # 20 of the first segment's 60 removed
    small = _loaded("seg-000001.faiss", ids[:60], vectors[:60], dead)
    rest = _loaded("seg-000002.faiss", ids[60:], vectors[60:])
    searcher = CoarseSearcher([small, rest], int(ids.max()) + 1, torch.device("cpu"))
    queries = space.queries(10, np.random.default_rng(8))
    _, found = searcher.search(queries, 50)
    live = ~np.isin(ids, dead)
    assert not np.isin(found, dead).any()
    assert np.array_equal(found, _exact(ids[live], vectors[live], queries, 50))


def test_verify_takes_sq8_codes_of_outliers_for_intact_and_other_vectors_for_damage(
        small_thresholds):
    """An SQ8 segment clips values outside the ranges trained on its sample; verify expects
    the segment's own coding of the fine copy, so such a vector is intact, while another
    clip's vector in its place is damage."""
    import faiss

    from mgvr.storage.coarse import inverted_list
    from mgvr.storage.verify import _stored_as

    _, ids, vectors = _clips(9001)
    index, layout = build_segment(ids[:-1], vectors[:-1])
    assert layout.kind == "ivf-sq8"
    # A clip outside the sample the ranges were trained on (as at 1M clips, where the sample
    # is 6.5%), with one value far out of range: clipped by the codes.
    vectors[-1, 3] = 4.0
    index.add_with_ids(vectors[-1:], ids[-1:])
    ivf = faiss.extract_index_ivf(index)
    got = [inverted_list(ivf, n) for n in range(ivf.nlist)]
    stored_ids = np.concatenate([i for i, _ in got])
    stored = np.concatenate([v for _, v in got])
    fine = vectors[np.searchsorted(ids, stored_ids)]
    outlier = np.flatnonzero(stored_ids == ids[-1])[0]
    assert np.abs(stored[outlier] - fine[outlier]).max() > 1.0  # the codes did clip it
    assert _stored_as(stored, fine, index).all()
    swapped = fine.copy()
    swapped[[0, 1]] = fine[[1, 0]]
    assert _stored_as(stored, swapped, index).tolist() == [False, False] + [True] * (len(fine) - 2)
