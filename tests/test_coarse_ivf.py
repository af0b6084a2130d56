"""The coarse index's layout by size: exact while small, IVF when large, on real FAISS files,
with IVF answers checked against brute force."""

import faiss
import numpy as np
import pytest
import torch

from mgvr.retriever.recall import CoarseSearcher, TorchExactSearch
from mgvr.retriever.synthetic import SyntheticSpace
from mgvr.storage import coarse as coarse_module
from mgvr.storage.coarse import CoarseIndex, nlist_for, recall_at_k

DIM = 32


@pytest.fixture
def small_threshold(monkeypatch):
    """IVF from 4,000 vectors instead of 50,000, so the tests stay fast; policy is unchanged."""
    monkeypatch.setattr(coarse_module, "IVF_MIN_CLIPS", 4000)


def _clips(count: int, seed: int = 0) -> tuple[SyntheticSpace, np.ndarray, np.ndarray]:
    space = SyntheticSpace.make(DIM, topics=max(8, count // 200), rank=16, seed=seed)
    _, vectors = space.clips(count, 2, np.random.default_rng(seed + 1))
    return space, np.arange(10, 10 + count, dtype=np.int64) * 3, vectors


def _exact(ids, vectors, queries, k):
    scores = queries @ vectors.T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def test_stays_exact_below_the_threshold(tmp_path, small_threshold):
    _, ids, vectors = _clips(3000)
    index = CoarseIndex.empty(DIM)
    index.add(ids, vectors)
    index.save(tmp_path / "coarse-000001.faiss")
    loaded = CoarseIndex.load(tmp_path / "coarse-000001.faiss", DIM)
    assert loaded.describe() == {"kind": "exact", "clips": 3000}


def test_becomes_ivf_with_recall_above_target_and_records_it_in_the_file(tmp_path,
                                                                         small_threshold):
    space, ids, vectors = _clips(12000)
    index = CoarseIndex.empty(DIM)
    index.add(ids, vectors)
    index.save(tmp_path / "coarse-000002.faiss")
    loaded = CoarseIndex.load(tmp_path / "coarse-000002.faiss", DIM)
    info = loaded.describe()
    assert info["kind"] == "ivf" and info["clips"] == 12000
    assert info["nlist"] == nlist_for(12000) == 128 and 1 <= info["nprobe"] <= 128
    assert isinstance(faiss.read_index(str(tmp_path / "coarse-000002.faiss")), faiss.IndexIVFFlat)

    queries = space.queries(100, np.random.default_rng(9))
    scores, found = loaded.search(queries, 50)
    assert recall_at_k(found, _exact(ids, vectors, queries, 50)) >= 0.98
    exact_scores = np.take_along_axis(queries @ vectors.T, np.searchsorted(
        ids, np.where(found >= 0, found, ids[0])), axis=1)
    assert np.allclose(scores[found >= 0], exact_scores[found >= 0], atol=1e-5)

    stored_ids, stored = loaded.items()
    order = np.argsort(stored_ids)
    assert np.array_equal(stored_ids[order], ids) and np.array_equal(stored[order], vectors)


def test_ivf_keeps_add_and_remove_by_clip_id(tmp_path, small_threshold):
    space, ids, vectors = _clips(6000)
    index = CoarseIndex.empty(DIM)
    index.add(ids, vectors)
    assert index.fit_layout() and index.kind == "ivf"
    removed = ids[::5].tolist()
    assert index.remove(removed) == len(removed)
    _, extra_ids, extra = _clips(500, seed=4)
    extra_ids = extra_ids + 10 ** 6
    index.add(extra_ids, extra)
    index.save(tmp_path / "coarse-000003.faiss")
    loaded = CoarseIndex.load(tmp_path / "coarse-000003.faiss", DIM)
    assert len(loaded) == 6000 - len(removed) + 500

    keep = ~np.isin(ids, removed)
    all_ids = np.concatenate([ids[keep], extra_ids])
    all_vectors = np.concatenate([vectors[keep], extra])
    queries = space.queries(50, np.random.default_rng(2))
    _, found = loaded.search(queries, 50)
    assert not np.isin(found, removed).any()
    assert recall_at_k(found, _exact(all_ids, all_vectors, queries, 50)) >= 0.98
    assert set(loaded.ids().tolist()) == set(all_ids.tolist())


def test_layout_follows_the_size_with_hysteresis(small_threshold):
    _, ids, vectors = _clips(20000)
    index = CoarseIndex.empty(DIM)
    index.add(ids[:4000], vectors[:4000])
    assert index.fit_layout() and index.describe()["nlist"] == 64
    index.add(ids[4000:16000], vectors[4000:16000])  # 16,000 = 4 * 64^2: still in range
    assert not index.fit_layout()
    index.add(ids[16000:], vectors[16000:])  # past 4 * nlist^2: retrain with more lists
    assert index.fit_layout() and index.describe()["nlist"] == nlist_for(20000) == 128
    index.remove(ids[2500:].tolist())  # too few for 128 lists: fewer lists
    assert index.fit_layout() and index.describe()["nlist"] == nlist_for(2500) == 64
    index.remove(ids[1500:2500].tolist())  # below half the threshold: exact again
    assert index.fit_layout() and index.describe() == {"kind": "exact", "clips": 1500}


def test_searcher_on_ivf_answers_like_the_index(small_threshold):
    space, ids, vectors = _clips(5000)
    index = CoarseIndex.empty(DIM)
    index.add(ids, vectors)
    index.fit_layout()
    searcher = CoarseSearcher(index, torch.device("cpu"))
    assert searcher.backend == "faiss-cpu-ivf"
    queries = space.queries(3, np.random.default_rng(0))
    for query in queries:
        scores, found = searcher.search(query[None], 20)
        expected_scores, expected = index.search(query[None], 20)
        assert np.array_equal(found, expected) and np.array_equal(scores, expected_scores)


def test_torch_exact_search_the_gpu_fallback_matches_brute_force():
    # The GPU fallback's code (float16 vectors, one matmul, top-k) run on the CPU.
    space, ids, vectors = _clips(3000)
    index = CoarseIndex.empty(DIM)
    index.add(ids, vectors)
    index.remove(ids[::7].tolist())
    kept = np.setdiff1d(np.arange(len(ids)), np.arange(0, len(ids), 7))
    search = TorchExactSearch(index, torch.device("cpu"))
    queries = space.queries(5, np.random.default_rng(3)).astype(np.float32)
    scores, found = search.search(queries, 20)
    exact_scores = queries @ vectors[kept].T
    for q in range(len(queries)):
        order = np.argsort(-exact_scores[q])
        # float16 storage moves scores by ~1e-3: compare sets above that margin.
        assert np.allclose(scores[q], exact_scores[q][order[:20]], atol=2e-3)
        assert len(set(found[q]) ^ set(ids[kept][order[:20]])) <= 2
        assert set(found[q].tolist()) <= set(ids[kept].tolist())  # no removed clip comes back
        by_id = dict(zip(ids.tolist(), vectors, strict=True))
        true_scores = np.array([by_id[i] @ queries[q] for i in found[q].tolist()])
        assert np.allclose(scores[q], true_scores, atol=2e-3)  # each id with its own score
