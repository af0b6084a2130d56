"""The GPU paths against the CPU ones (marked `gpu`: skipped where CUDA is absent, see
conftest.py). Run them on a CUDA machine with `pytest -m gpu` (bench/gpu_check.sh does)."""

import numpy as np
import pytest
import torch
from conftest import run_cli
from synthetic import SyntheticSpace

import mgvr
from mgvr.model.clip import ClipEncoder
from mgvr.retriever.recall import CoarseSearcher, LoadedSegment, TorchExactSearch, faiss_has_gpu
from mgvr.retriever.rerank import batch_candidates, score_candidates
from mgvr.storage.catalog import SegmentRecord
from mgvr.storage.coarse import build_segment
from mgvr.storage.fine import FineBatch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_fp16_frame_encoding_on_cuda_agrees_with_the_cpu(tiny_model, sample_clips):
    cpu = ClipEncoder.load(tiny_model["model"], tiny_model["pretrained"], "cpu")
    gpu = ClipEncoder.load(tiny_model["model"], tiny_model["pretrained"], "cuda")
    frames = np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    a, b = cpu.encode_frames(frames), gpu.encode_frames(frames)
    # fp16 autocast: cosine within 1e-3 of the float32 answer.
    assert (torch.nn.functional.cosine_similarity(a, b) > 0.999).all()
    texts, _ = cpu.encode_texts(["a red car"])
    texts_gpu, _ = gpu.encode_texts(["a red car"])
    assert torch.nn.functional.cosine_similarity(texts, texts_gpu).item() > 0.999


def _segments(count=6000, dim=64):
    space = SyntheticSpace.make(dim, 30, rank=16)
    _, vectors = space.clips(count, 2, np.random.default_rng(1))
    ids = np.arange(count, dtype=np.int64) * 2 + 5
    dead = ids[::11]
    segments = []
    for start, stop in ((0, 5000), (5000, count)):
        index, layout = build_segment(ids[start:stop], vectors[start:stop], "flat")
        record = SegmentRecord(f"seg-{start}", layout.kind, layout.rows, None, None, None)
        mine = dead[(dead >= ids[start]) & (dead <= ids[stop - 1])]
        segments.append(LoadedSegment(record, index, mine))
    return space, ids, vectors, dead, segments


def test_gpu_recall_returns_the_cpu_top_k_without_dead_clips():
    space, ids, vectors, dead, segments = _segments()
    queries = space.queries(20, np.random.default_rng(2))
    cpu = CoarseSearcher(segments, int(ids.max()) + 1, torch.device("cpu"))
    gpu = CoarseSearcher(segments, int(ids.max()) + 1, CUDA)
    expected = "faiss-gpu-flat" if faiss_has_gpu() else "torch-gpu-exact"
    assert set(gpu.backends.values()) == {expected}
    _, want = cpu.search(queries, 50)
    _, got = gpu.search(queries, 50)
    assert not np.isin(got, dead).any()
    overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(want, got, strict=True)])
    assert overlap >= 0.98  # float16 on the GPU may swap near-ties
    allowed = np.sort(ids[::7])
    _, filtered = gpu.search(queries, 20, allowed_ids=allowed)
    assert set(filtered[filtered >= 0].tolist()) <= set(allowed.tolist())


def test_torch_exact_search_on_cuda_matches_the_cpu():
    _, ids, vectors, _, _ = _segments()
    queries = vectors[:5] + 0.01
    a = TorchExactSearch(ids, vectors, torch.device("cpu")).search(queries, 10)
    b = TorchExactSearch(ids, vectors, CUDA).search(queries, 10)
    assert np.array_equal(a[1][:, 0], b[1][:, 0]) and np.allclose(a[0], b[0], atol=2e-3)


def test_the_rerank_on_cuda_gives_the_cpu_scores_and_order():
    rng = np.random.default_rng(3)
    n, f, d = 50, 12, 64
    features = rng.standard_normal((n, f, d)).astype(np.float32)
    features /= np.linalg.norm(features, axis=2, keepdims=True)
    coarse = features.mean(1) / np.linalg.norm(features.mean(1), axis=1, keepdims=True)
    batch = FineBatch(np.arange(n, dtype=np.int64), np.full(n, f, np.int32),
                      np.tile(np.arange(f, dtype=np.float32), (n, 1)),
                      features.astype(np.float16), coarse.astype(np.float32))
    text = torch.from_numpy(coarse[0] + 0.1 * rng.standard_normal(d).astype(np.float32))
    text = text / text.norm()
    cpu_scores, cpu_moments = score_candidates(text, batch_candidates(batch, torch.device("cpu")))
    gpu_scores, gpu_moments = score_candidates(text, batch_candidates(batch, CUDA))
    assert np.allclose(cpu_scores, gpu_scores, atol=1e-4)
    assert np.array_equal(np.argsort(-cpu_scores), np.argsort(-gpu_scores))
    assert np.array_equal(cpu_moments, gpu_moments)


def test_an_index_built_on_cuda_searches_like_one_built_on_the_cpu(tmp_path, corpus, tiny_model):
    built = {}
    for device in ("cpu", "cuda"):
        index_dir = tmp_path / device
        result = run_cli("index", str(corpus), "--index", str(index_dir), "--model",
                         tiny_model["model"], "--pretrained", tiny_model["pretrained"],
                         "--device", device)
        assert result.returncode == 0, result.stderr
        built[device] = [(h.path, h.start_s) for h in
                         mgvr.Index(index_dir, device=device).search("a test pattern", limit=5)]
    assert built["cpu"][:3] == built["cuda"][:3]
